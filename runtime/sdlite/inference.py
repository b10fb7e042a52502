"""onnxruntime sessions for the exported graphs, on the CPU or a CUDA GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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
    """One graph: an onnxruntime session made once and reused. Names are one name or a list of them;
    a call takes the inputs in that order and gives one array, or a tuple for several outputs."""

    def __init__(self, model: Path | bytes, device: str, input_name: str | Sequence[str],
                 output_name: str | Sequence[str], threads: int | None = None, label: str | None = None):
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
        self.input_names = [input_name] if isinstance(input_name, str) else list(input_name)
        self.output_names = [output_name] if isinstance(output_name, str) else list(output_name)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        try:
            outputs = self.session.run(self.output_names, dict(zip(self.input_names, arrays)))
        except Exception as exc:  # onnxruntime's untyped errors: above all, memory it could not get
            message = str(exc).splitlines()[0]
            if "Failed to allocate memory" in message:
                shape = "x".join(map(str, arrays[0].shape))
                raise SdliteError(f"not enough memory to run {self.label} on a {shape} input "
                                  f"(lower --max-pixels or use a smaller picture)") from None
            raise SdliteError(f"{self.label} failed: {message}") from None
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
