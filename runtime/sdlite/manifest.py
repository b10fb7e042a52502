"""The model manifest: what a runtime must know, and may check, about an exported model folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SdliteError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sdlite-model"
MANIFEST_VERSION = 1


def latent_space_id(latent_space: str) -> bytes:
    """The 8 bytes that stand for a latent space in .sdc files (a hash, so names can be any length)."""
    return hashlib.sha256(latent_space.encode("utf-8")).digest()[:8]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Graph:
    file: str
    sha256: str
    input: str
    output: str
    # Peak bytes of a run on a square of n latent cells: fixed + linear * n + quadratic * n**2, measured
    # at export; what tiling plans with. None in manifests from before it was recorded.
    memory: list[float] | None = None
    seconds: float | None = None  # per run at the export's check size, on the export machine's CPU


PRECISIONS = ("fp32", "int8", "bf16", "fp16")
FP32 = "fp32"


@dataclass
class Variant:
    """The graphs in a lower precision, made at export, with what they cost in quality and gain in time."""

    precision: str
    devices: list[str]  # where this variant runs
    encoder: Graph
    decoder: Graph
    # PSNR (dB) of the decoded picture against the float32 chain's: "encoder" with this encoder and the
    # float32 decoder, "decoder" with the float32 encoder and this decoder.
    psnr_db: dict[str, float]
    # Nodes kept in float32 because they overflow in this precision.
    float32_nodes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> Variant:
        data = dict(data)
        for graph in ("encoder", "decoder"):
            data[graph] = Graph(**data[graph])
        return cls(**data)


@dataclass
class Manifest:
    name: str
    source: str
    latent_space: str
    latent_channels: int
    downsampling_factor: int
    scaling_factor: float
    shift_factor: float
    encoder: Graph
    decoder: Graph
    verification: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)

    @property
    def latent_space_id(self) -> bytes:
        return latent_space_id(self.latent_space)

    def to_json(self) -> str:
        data = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, **asdict(self)}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.pop("format", None) != MANIFEST_FORMAT:
                raise ValueError("not an sdlite model manifest")
            if data.pop("format_version", None) != MANIFEST_VERSION:
                raise ValueError("unsupported manifest version")
            for graph in ("encoder", "decoder"):
                data[graph] = Graph(**data[graph])
            data["variants"] = [Variant.from_dict(variant) for variant in data.get("variants", [])]
            manifest = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise SdliteError(f"invalid model manifest: {exc}") from None
        if manifest.latent_channels < 1 or manifest.downsampling_factor < 1:
            raise SdliteError("invalid model manifest: latent_channels and downsampling_factor must be positive")
        if any(variant.precision not in PRECISIONS for variant in manifest.variants):
            raise SdliteError(f"invalid model manifest: a variant's precision is not one of {', '.join(PRECISIONS)}")
        return manifest

    def graphs(self, precision: str) -> tuple[Graph, Graph] | None:
        """The encoder and decoder of one precision, None when the export made no such variant."""
        if precision == FP32:
            return self.encoder, self.decoder
        return next(((v.encoder, v.decoder) for v in self.variants if v.precision == precision), None)


def graph_path(folder: Path, graph: Graph) -> Path:
    """The graph's file inside the model folder; a manifest may not point anywhere else."""
    path = (folder / graph.file).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise SdliteError(f"model {folder}: graph path {graph.file!r} points outside the model folder")
    if not path.is_file():
        raise SdliteError(f"model {folder}: graph file {graph.file} is missing")
    return path


def load_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise SdliteError(f"{folder} is not a model folder: it has no {MANIFEST_NAME}")
    return Manifest.from_json(path.read_text(encoding="utf-8"))


def verified_graph_path(folder: Path, graph: Graph) -> Path:
    """The graph's path, after checking that the file is the one the export wrote."""
    path = graph_path(folder, graph)
    if file_sha256(path) != graph.sha256:
        raise SdliteError(f"model {folder}: {graph.file} does not match the sha256 in its manifest (tampered or corrupt)")
    return path
