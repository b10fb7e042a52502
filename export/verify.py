"""Checking what the export wrote: onnx's checker, then onnxruntime against the torch module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from sdlite.errors import SdliteError
from sdlite.inference import Graph

# |onnx - torch| may not exceed this times max(1, max |torch|): float32 reordering costs about 1e-5.
DEFAULT_TOLERANCE = 1e-3


def sample_image(height: int, width: int) -> torch.Tensor:
    """A deterministic picture with smooth gradients, edges and fine texture, in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    red = x
    green = 0.5 + 0.5 * torch.sin(12.0 * x * y + 3.0 * y)
    blue = ((x * 6).floor() + (y * 6).floor()) % 2 * 0.8 + 0.1
    texture = 0.05 * torch.sin(40.0 * x) * torch.cos(37.0 * y)
    return (torch.stack([red, green, blue])[None] + texture).clamp(0, 1)


def check_graph(module: torch.nn.Module, path: Path, names: tuple[str, str], example: torch.Tensor,
                tolerance: float) -> dict:
    """The largest difference between onnxruntime and torch on `example`; raises when it is too large."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise SdliteError(f"{path.name} fails onnx's checker: {str(exc).splitlines()[0]}") from None
    with torch.no_grad():
        expected = module(example).numpy()
    actual = Graph(path, "cpu", *names)(example.numpy())
    if actual.shape != expected.shape:
        raise SdliteError(f"{path.name}: onnxruntime gives shape {actual.shape}, torch {expected.shape}")
    difference = float(np.abs(actual - expected).max())
    bound = tolerance * max(1.0, float(np.abs(expected).max()))
    if not difference <= bound:
        raise SdliteError(f"{path.name}: onnxruntime differs from torch by {difference:.3g}, above the tolerance {bound:.3g}")
    return {"max_abs_diff": difference, "bound": bound, "input_shape": list(example.shape)}
