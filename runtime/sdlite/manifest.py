"""The model manifest: what a runtime must know, and may check, about an exported model folder."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SdliteError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sdlite-model"
MANIFEST_VERSION = 1
MANIFEST_MAX_BYTES = 1 << 20  # a real one is about 2 kB; a larger one is not read at all
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
    # Peak bytes of a run on a square of n latent cells: fixed + linear * n + quadratic * n**2, measured
    # at export; what tiling plans with. None in manifests from before it was recorded.
    memory: list[float] | None = None
    seconds: float | None = None  # per run on a TIMED_SIDE square picture, on the export machine's CPU
    # This graph cut before each group norm and attention (see lockstep.py); None for graphs without
    # group norms, and in older manifests.
    segments: Segmented | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Graph:
        segments = data.get("segments")
        return cls(**{**data, "segments": None if segments is None else Segmented.from_dict(segments)})


@dataclass
class Segment:
    """A piece of the decoder between two group norms or attentions (see lockstep.py): its graph, and
    what the runtime computes after it. For a norm: the normalised tensor the next segments read, its
    groups and epsilon, the graph's first output being the norm's input. For an attention: the tensor
    softmax(q @ kT) @ v that the next segments read, the graph's first three outputs being q, kT and v.
    The last segment is followed by neither."""

    graph: Graph
    normalised: str | None = None
    groups: int | None = None
    epsilon: float | None = None
    attended: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Segment:
        return cls(**{**data, "graph": Graph.from_dict(data["graph"])})


@dataclass
class Segmented:
    """A graph cut before each group norm and attention, for tiles that see the whole picture (see
    lockstep.py)."""

    segments: list[Segment]
    # The most bytes of tensors held between two segments at once, per latent cell, run in one piece.
    held_bytes_per_cell: float

    @classmethod
    def from_dict(cls, data: dict) -> Segmented:
        return cls(**{**data, "segments": [Segment.from_dict(segment) for segment in data["segments"]]})


PRECISIONS = ("fp32", "int8", "bf16", "fp16")
TIMED_SIDE = 256  # the side of the picture the export times each graph on (Graph.seconds)
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
            data[graph] = Graph.from_dict(data[graph])
        return cls(**data)


@dataclass
class LatentCodecEntry:
    """The learned method's parts: its parameters (integer hyper-synthesis and frequency tables, see
    methods/learned.py) and its three graphs."""

    file: str
    sha256: str
    source: str
    analysis: Graph
    hyper_analysis: Graph
    synthesis: Graph
    # (code, target) -> (image, gradient of the MSE w.r.t. the code) through synthesis and decoder, for
    # the encoder's effort; None where the export made no gradient graphs.
    code_vjp: Graph | None = None

    @classmethod
    def from_dict(cls, data: dict) -> LatentCodecEntry:
        graphs = {name: Graph.from_dict(data[name]) for name in ("analysis", "hyper_analysis", "synthesis")
                  if name in data}
        if data.get("code_vjp") is not None:
            graphs["code_vjp"] = Graph.from_dict(data["code_vjp"])
        return cls(**{**data, **graphs})

    @property
    def graphs(self) -> dict[str, Graph]:
        graphs = {"analysis": self.analysis, "hyper_analysis": self.hyper_analysis, "synthesis": self.synthesis}
        return graphs | ({"code_vjp": self.code_vjp} if self.code_vjp else {})


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
    variants: list[Variant] = field(default_factory=list)
    # How much each latent channel moves the decoded image (mean squared pixel change per unit of
    # squared latent change), measured by the export; empty when unknown, as in older manifests.
    channel_sensitivity: list = field(default_factory=list)
    # The learned method's trained codec of this latent space; None where none was trained.
    latent_codec: LatentCodecEntry | None = None

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
            if not isinstance(data, dict) or data.pop("format", None) != MANIFEST_FORMAT:
                raise ValueError("not an sdlite model manifest")
            if data.pop("format_version", None) != MANIFEST_VERSION:
                raise ValueError("unsupported manifest version")
            for graph in ("encoder", "decoder", "decoder_vjp"):
                if graph == "decoder_vjp" and data.get(graph) is None:
                    continue  # optional: older model folders have none
                if not isinstance(data.get(graph), dict):
                    raise ValueError(f"{graph} is not described")
                data[graph] = Graph.from_dict(data[graph])
            data["variants"] = [Variant.from_dict(variant) for variant in data.get("variants", [])]
            if data.get("latent_codec") is not None:
                if not isinstance(data["latent_codec"], dict):
                    raise ValueError("latent_codec is not described")
                data["latent_codec"] = LatentCodecEntry.from_dict(data["latent_codec"])
            manifest = cls(**data)
            manifest._check_values()
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise SdliteError(f"invalid model manifest: {exc}") from None
        return manifest

    def _check_values(self) -> None:
        """A manifest comes with a downloaded model folder: every value is checked before it is used."""
        for name in ("name", "source", "latent_space"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        for name, largest in (("latent_channels", 65535), ("downsampling_factor", 64)):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= largest:
                raise ValueError(f"{name} must be a whole number from 1 to {largest}")
        for name in ("scaling_factor", "shift_factor"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        for variant in self.variants:
            if variant.precision not in PRECISIONS:
                raise ValueError(f"a variant's precision is not one of {', '.join(PRECISIONS)}")
        coding = (self.encoder, self.decoder, *(g for v in self.variants for g in (v.encoder, v.decoder)))
        for graph in coding:
            if not all(isinstance(value, str) for value in (graph.file, graph.sha256, graph.input, graph.output)):
                raise ValueError("graph file, sha256, input and output must be strings")
        gradient = self.decoder_vjp
        if gradient is not None:
            names = (gradient.input, gradient.output)
            if (not all(isinstance(value, str) for value in (gradient.file, gradient.sha256))
                    or not all(isinstance(n, list) and n and all(isinstance(v, str) for v in n) for n in names)):
                raise ValueError("decoder_vjp: file and sha256 must be strings, input and output lists of names")
        for graph in coding:
            if graph.segments is not None:
                self._check_segmented(graph.file, graph.segments)
        segment_graphs = [segment.graph for graph in coding if graph.segments for segment in graph.segments.segments]
        codec = self.latent_codec
        codec_graphs = list(codec.graphs.values()) if codec else []
        for graph in codec_graphs:
            names = (graph.input, graph.output)
            if not all(isinstance(value, str) for value in (graph.file, graph.sha256)) or not all(
                    isinstance(n, str) or isinstance(n, list) and n and all(isinstance(v, str) for v in n)
                    for n in names):
                raise ValueError("latent codec graphs: file and sha256 must be strings, input and output names")
        if codec and not all(isinstance(value, str) for value in (codec.file, codec.sha256, codec.source)):
            raise ValueError("latent_codec: file, sha256 and source must be strings")
        for graph in (*coding, *([gradient] if gradient else []), *segment_graphs, *codec_graphs,
                      *([codec] if codec else [])):
            if not SHA256_HEX.fullmatch(graph.sha256):
                raise ValueError(f"the sha256 of {graph.file!r} is not 64 hexadecimal digits")
        sensitivity = self.channel_sensitivity
        if not isinstance(sensitivity, list) or sensitivity and (
                len(sensitivity) != self.latent_channels
                or not all(type(s) in (int, float) and 0 < s < math.inf for s in sensitivity)):
            raise ValueError("channel_sensitivity needs one positive number per latent channel")

    @staticmethod
    def _check_segmented(role: str, segmented: Segmented) -> None:
        if not isinstance(segmented.segments, list) or not segmented.segments:
            raise ValueError(f"the segments of {role} must be a list of at least one")
        for segment in segmented.segments:
            graph = segment.graph
            if graph.segments is not None:
                raise ValueError(f"the segments of {role} are not cut again")
            if (not all(isinstance(value, str) for value in (graph.file, graph.sha256))
                    or not all(isinstance(n, list) and n and all(isinstance(v, str) for v in n)
                               for n in (graph.input, graph.output))):
                raise ValueError(f"{role} segments: file and sha256 must be strings, input and output lists of names")
            if segment.normalised is not None and (
                    not isinstance(segment.normalised, str) or type(segment.groups) is not int or segment.groups < 1
                    or type(segment.epsilon) not in (int, float) or not 0 < segment.epsilon < 1):
                raise ValueError(f"{role} segments: a norm needs a tensor name, whole groups and an epsilon in (0, 1)")
            if segment.attended is not None and (not isinstance(segment.attended, str) or segment.normalised
                                                 or len(graph.output) < 3):
                raise ValueError(f"{role} segments: an attention needs a tensor name and q, kT and v")
        last = segmented.segments[-1]
        held = segmented.held_bytes_per_cell
        if last.normalised or last.attended or type(held) not in (int, float) or not 0 < held < math.inf:
            raise ValueError(f"{role} segments: the last is followed by nothing, and they hold a positive size")

    def graphs(self, precision: str) -> tuple[Graph, Graph] | None:
        """The encoder and decoder of one precision, None when the export made no such variant."""
        if precision == FP32:
            return self.encoder, self.decoder
        return next(((v.encoder, v.decoder) for v in self.variants if v.precision == precision), None)


def graph_path(folder: Path, graph: Graph) -> Path:
    """The graph's file inside the model folder; a manifest may not point anywhere else."""
    try:
        path = (folder / graph.file).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise SdliteError(f"model {folder}: graph path {graph.file!r} is invalid ({exc})") from None
    if not path.is_relative_to(folder.resolve()):
        raise SdliteError(f"model {folder}: graph path {graph.file!r} points outside the model folder")
    if not path.is_file():
        raise SdliteError(f"model {folder}: graph file {graph.file} is missing")
    return path


def load_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise SdliteError(f"{folder} is not a model folder: it has no {MANIFEST_NAME}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MANIFEST_MAX_BYTES + 1)
    except OSError as exc:
        raise SdliteError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MANIFEST_MAX_BYTES:
        raise SdliteError(f"invalid model manifest: {path} is larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SdliteError(f"invalid model manifest: {path} is not UTF-8 text") from None
    return Manifest.from_json(text)


def verified_graph_bytes(folder: Path, graph: Graph) -> bytes:
    """The graph's bytes, after checking that they are the ones the export wrote. The bytes checked are
    the bytes run: a file swapped after the check is never loaded."""
    path = graph_path(folder, graph)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SdliteError(f"model {folder}: cannot read {graph.file}: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != graph.sha256:
        raise SdliteError(f"model {folder}: {graph.file} does not match the sha256 in its manifest (tampered or corrupt)")
    return data
