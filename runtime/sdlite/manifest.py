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
    input: str | list[str]  # a list for a graph of several inputs (or outputs), in call order
    output: str | list[str]


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
    # (latent, target) -> (image, gradient of the MSE w.r.t. the latent), for the encoder's effort;
    # optional: older model folders have none, and then only effort 0 is available.
    decoder_vjp: Graph | None = None
    verification: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    # How much each latent channel moves the decoded image (mean squared pixel change per unit of
    # squared latent change), measured by the export; empty when unknown, as in older manifests.
    channel_sensitivity: list = field(default_factory=list)

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
            for graph in ("encoder", "decoder", "decoder_vjp"):
                if data.get(graph) is not None:
                    data[graph] = Graph(**data[graph])
            manifest = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise SdliteError(f"invalid model manifest: {exc}") from None
        if manifest.latent_channels < 1 or manifest.downsampling_factor < 1:
            raise SdliteError("invalid model manifest: latent_channels and downsampling_factor must be positive")
        sensitivity = manifest.channel_sensitivity
        if sensitivity and (len(sensitivity) != manifest.latent_channels
                            or not all(isinstance(s, (int, float)) and 0 < s < float("inf") for s in sensitivity)):
            raise SdliteError("invalid model manifest: channel_sensitivity needs one positive number per latent channel")
        return manifest


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
