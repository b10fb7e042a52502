"""Choosing which precision of a graph to run: the one asked for, or the fastest acceptable one."""

from __future__ import annotations

from ..errors import SdliteError
from ..manifest import FP32, Graph, Manifest

AUTO = "auto"
EXPORTED = ("int8", "fp16")  # the variants `python -m export build --precisions` can make
# The manifest format has room for bf16, but the export never makes it (onnxruntime's CPU provider has no
# bf16 convolution): offering it would only lead to an error.
CHOICES = (FP32, *EXPORTED, AUTO)
# Below this PSNR against the float32 chain's picture, a variant's loss would show next to the codec's own.
ACCEPTABLE_PSNR_DB = 35.0


def check_precision(precision: str) -> None:
    if precision not in CHOICES:
        raise SdliteError(f"unknown precision {precision!r}: choose one of {', '.join(CHOICES)}")


def choose_graph(manifest: Manifest, role: str, precision: str, device: str) -> tuple[str, Graph]:
    """The precision and graph to run as the `role` ("encoder" or "decoder") on `device` (cpu or cuda).

    auto takes, among float32 and the variants made for the device whose recorded PSNR for this role
    is acceptable, on the CPU the one measured fastest at export, and on CUDA a variant made for it
    (CUDA variants exist to use its half-precision units, which the export machine cannot time).
    """
    check_precision(precision)
    if precision != AUTO:
        graphs = manifest.graphs(precision)
        if graphs is None:
            made = ", ".join([FP32, *(v.precision for v in manifest.variants)])
            raise SdliteError(f"model {manifest.name} has no {precision} variant (it has {made}): "
                              f"export it with `python -m export build --precisions {precision}`")
        return precision, graphs[0 if role == "encoder" else 1]
    base = getattr(manifest, role)
    candidates = [(v.precision, getattr(v, role)) for v in manifest.variants
                  if device in v.devices and v.psnr_db.get(role, 0.0) >= ACCEPTABLE_PSNR_DB]
    if device == "cuda":
        return candidates[0] if candidates else (FP32, base)
    timed = [(graph.seconds, name, graph) for name, graph in [(FP32, base), *candidates] if graph.seconds]
    if not timed or base.seconds is None:
        return FP32, base
    _, name, graph = min(timed, key=lambda entry: entry[0])
    return name, graph
