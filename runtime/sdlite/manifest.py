"""The model manifest: what a runtime must know, and may check, about an exported model folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass, rebuild_dataclass

from .errors import SdliteError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sdlite-model"
MANIFEST_VERSION = 1
MANIFEST_MAX_BYTES = 1 << 20  # a real one is about 2 kB; a larger one is not read at all


def latent_space_id(latent_space: str) -> bytes:
    """The 8 bytes that stand for a latent space in .sdc files (a hash, so names can be any length)."""
    return hashlib.sha256(latent_space.encode("utf-8")).digest()[:8]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _encodable(text: str) -> str:
    """JSON may hold lone surrogates ("\\ud800"), which no file name or hash input can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return text


Text = Annotated[str, Strict(), AfterValidator(_encodable)]
Name = Annotated[Text, Field(min_length=1)]
Names = Annotated[list[Name], Field(min_length=1)]
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Bytes = Annotated[float, Strict(), Field(ge=-(2.0**62), le=2.0**62, allow_inf_nan=False)]
# Every value of a manifest is checked at load: a model folder may come from anywhere. Unknown keys are
# refused, so that a misspelt one is not silently ignored.
CHECKED = ConfigDict(extra="forbid")


@dataclass(config=CHECKED)
class Graph:
    file: Name
    sha256: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{64}$")]
    input: Name | Names  # a list for a graph of several inputs (or outputs), in call order
    output: Name | Names
    # Peak bytes of a run on a square of n latent cells: fixed + linear * n + quadratic * n**2, measured
    # at export; what tiling plans with. None in manifests from before it was recorded.
    memory: tuple[Bytes, Annotated[NonNegative, Field(le=2.0**62)], Annotated[NonNegative, Field(le=2.0**62)]] | None = None
    seconds: NonNegative | None = None  # per run on a TIMED_SIDE square picture, on the export machine's CPU
    # This graph cut before each group norm and attention (see lockstep.py); None for graphs without
    # group norms, and in older manifests.
    segments: Segmented | None = None


@dataclass(config=CHECKED)
class Segment:
    """A piece of the decoder between two group norms or attentions (see lockstep.py): its graph, and
    what the runtime computes after it. For a norm: the normalised tensor the next segments read, its
    groups and epsilon, the graph's first output being the norm's input. For an attention: the tensor
    softmax(q @ kT) @ v that the next segments read, the graph's first three outputs being q, kT and v.
    The last segment is followed by neither."""

    graph: Graph
    normalised: Name | None = None
    groups: Annotated[int, Strict(), Field(ge=1, le=65535)] | None = None
    epsilon: Annotated[float, Strict(), Field(gt=0, lt=1)] | None = None
    attended: Name | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Segment:
        if not (isinstance(self.graph.input, list) and isinstance(self.graph.output, list)):
            raise ValueError("a segment's graph has lists of input and output names")
        if self.graph.segments is not None:
            raise ValueError("a segment is not cut again")
        if self.normalised is not None and (self.groups is None or self.epsilon is None or self.attended):
            raise ValueError("a norm needs groups and an epsilon, and is not an attention")
        if self.attended is not None and len(self.graph.output) < 3:
            raise ValueError("an attention needs q, kT and v")
        return self


@dataclass(config=CHECKED)
class Segmented:
    """A graph cut before each group norm and attention, for tiles that see the whole picture (see
    lockstep.py)."""

    segments: Annotated[list[Segment], Field(min_length=1, max_length=4096)]
    # The most bytes of tensors held between two segments at once, per latent cell, run in one piece.
    held_bytes_per_cell: Annotated[Positive, Field(le=2.0**40)]

    @model_validator(mode="after")
    def _last_is_plain(self) -> Segmented:
        if self.segments[-1].normalised or self.segments[-1].attended:
            raise ValueError("the last segment is followed by nothing")
        return self


PRECISIONS = ("fp32", "int8", "bf16", "fp16")
TIMED_SIDE = 256  # the side of the picture the export times each graph on (Graph.seconds)
FP32 = "fp32"


@dataclass(config=CHECKED)
class Variant:
    """The graphs in a lower precision, made at export, with what they cost in quality and gain in time."""

    precision: Literal["fp32", "int8", "bf16", "fp16"]
    devices: list[Literal["cpu", "cuda"]]  # where this variant runs
    encoder: Graph
    decoder: Graph
    # PSNR (dB) of the decoded picture against the float32 chain's: "encoder" with this encoder and the
    # float32 decoder, "decoder" with the float32 encoder and this decoder.
    psnr_db: dict[Literal["encoder", "decoder"], Finite]
    # Nodes kept in float32 because they overflow in this precision.
    float32_nodes: list[Text] = field(default_factory=list)

    @model_validator(mode="after")
    def _both_measured(self) -> Variant:
        if set(self.psnr_db) != {"encoder", "decoder"}:
            raise ValueError("psnr_db needs the encoder's and the decoder's")
        return self


@dataclass(config=CHECKED)
class LatentCodecEntry:
    """The learned method's parts: its parameters (integer hyper-synthesis and frequency tables, see
    methods/learned.py) and its graphs."""

    file: Name
    sha256: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{64}$")]
    source: Text
    analysis: Graph
    hyper_analysis: Graph
    synthesis: Graph
    # (code, target) -> (image, gradient of the MSE w.r.t. the code) through synthesis and decoder, for
    # the encoder's effort; None where the export made no gradient graphs.
    code_vjp: Graph | None = None

    @property
    def graphs(self) -> dict[str, Graph]:
        graphs = {"analysis": self.analysis, "hyper_analysis": self.hyper_analysis, "synthesis": self.synthesis}
        return graphs | ({"code_vjp": self.code_vjp} if self.code_vjp else {})


@dataclass(config=CHECKED)
class Manifest:
    name: Name
    source: Text
    latent_space: Name
    latent_channels: Annotated[int, Strict(), Field(ge=1, le=65535)]
    downsampling_factor: Annotated[int, Strict(), Field(ge=1, le=64)]
    scaling_factor: Finite
    shift_factor: Finite
    encoder: Graph
    decoder: Graph
    # (latent, target) -> (image, gradient of the MSE w.r.t. the latent), for the encoder's effort;
    # optional: older model folders have none, and then only effort 0 is available.
    decoder_vjp: Graph | None = None
    verification: dict[Text, Any] = field(default_factory=dict)
    versions: dict[Text, Any] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    # How much each latent channel moves the decoded image (mean squared pixel change per unit of
    # squared latent change), measured by the export; empty when unknown, as in older manifests.
    channel_sensitivity: list[Positive] = field(default_factory=list)
    # The learned method's trained codec of this latent space; None where none was trained.
    latent_codec: LatentCodecEntry | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        coding = (self.encoder, self.decoder, *(g for v in self.variants for g in (v.encoder, v.decoder)))
        if not all(isinstance(g.input, str) and isinstance(g.output, str) for g in coding):
            raise ValueError("an encoder or decoder has one input and one output name")
        gradient = self.decoder_vjp
        if gradient is not None and not (isinstance(gradient.input, list) and isinstance(gradient.output, list)):
            raise ValueError("decoder_vjp has lists of input and output names")
        if self.channel_sensitivity and len(self.channel_sensitivity) != self.latent_channels:
            raise ValueError("channel_sensitivity needs one positive number per latent channel")
        return self

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
        except (ValueError, RecursionError) as exc:
            raise SdliteError(f"invalid model manifest: not JSON ({exc})") from None
        if not isinstance(data, dict) or data.pop("format", None) != MANIFEST_FORMAT:
            raise SdliteError("invalid model manifest: not an sdlite model manifest")
        if data.pop("format_version", None) != MANIFEST_VERSION:
            raise SdliteError("invalid model manifest: unsupported manifest version")
        try:
            return _MANIFEST.validate_python(data)
        except ValidationError as exc:
            raise SdliteError(f"invalid model manifest: {_first_error(exc)}") from None
        except RecursionError:
            raise SdliteError("invalid model manifest: nested too deeply") from None

    def graphs(self, precision: str) -> tuple[Graph, Graph] | None:
        """The encoder and decoder of one precision, None when the export made no such variant."""
        if precision == FP32:
            return self.encoder, self.decoder
        return next(((v.encoder, v.decoder) for v in self.variants if v.precision == precision), None)


for _cut_later in (Graph, Segment, Segmented):  # they refer to each other
    rebuild_dataclass(_cut_later)
_MANIFEST = TypeAdapter(Manifest)


def _first_error(error: ValidationError) -> str:
    """pydantic's first complaint in one line: where in the manifest, and what is wrong there."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("function-", "tagged-union")))
    message = first["msg"].replace("\n", " ")
    return f"{where}: {message}" if where else message


def graph_path(folder: Path, graph: Graph) -> Path:
    """The graph's file inside the model folder; a manifest may not point anywhere else."""
    try:
        path = (folder / graph.file).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise SdliteError(f"model {folder}: graph path {graph.file!r} is invalid ({exc})") from None
    if not path.is_relative_to(folder.resolve()):
        raise SdliteError(f"model {folder}: graph path {graph.file!r} points outside the model folder")
    try:
        is_file = path.is_file()
    except OSError as exc:  # a name too long for the file system, say
        raise SdliteError(f"model {folder}: graph path {graph.file[:100]!r} is invalid ({exc.strerror})") from None
    if not is_file:
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
