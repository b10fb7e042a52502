"""onnxruntime sessions for the exported graphs, on the CPU or a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import SdliteError

DEVICES = ("cpu", "cuda", "auto")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise SdliteError("--device cuda: this onnxruntime has no CUDA support (install onnxruntime-gpu and a CUDA driver)")
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise SdliteError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")


class Graph:
    """One graph, one input, one output: an onnxruntime session made once and reused."""

    def __init__(self, model: Path | bytes, device: str, input_name: str, output_name: str,
                 threads: int | None = None, label: str | None = None):
        """`model` is a file, or the graph's bytes: what was checked is then exactly what runs, and an
        ONNX external-data reference cannot make onnxruntime read files from elsewhere."""
        self.label = label or ("the graph" if isinstance(model, bytes) else str(model))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                providers=providers_for(device))
        except SdliteError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise SdliteError(f"cannot load {self.label}: {str(exc).splitlines()[0]}") from None
        self.input_name = input_name
        self.output_name = output_name

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, array: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: array})[0]
        except Exception as exc:  # onnxruntime's untyped errors: above all, memory it could not get
            message = str(exc).splitlines()[0]
            if "Failed to allocate memory" in message:
                shape = "x".join(map(str, array.shape))
                raise SdliteError(f"not enough memory to run {self.label} on a {shape} input "
                                  f"(lower --max-pixels or use a smaller picture)") from None
            raise SdliteError(f"{self.label} failed: {message}") from None
