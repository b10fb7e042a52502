"""Checking what the export wrote: onnx's checker, then onnxruntime against the torch module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from sdlite.errors import SdliteError
from sdlite.networks.inference import Graph

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


def run_onnx_checker(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise SdliteError(f"{path.name} fails onnx's checker: {str(exc).splitlines()[0]}") from None


def check_graph(module: torch.nn.Module, path: Path, names: tuple[str, str], example: torch.Tensor,
                tolerance: float) -> dict:
    """The largest difference between onnxruntime and torch on `example`; raises when it is too large."""
    run_onnx_checker(path)
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


def check_gradient_graph(decoder_graph: torch.nn.Module, path: Path, latent: torch.Tensor, target: torch.Tensor,
                         tolerance: float) -> dict:
    """The decoder-gradient graph against torch autograd; gradients are tiny, so the bound is relative to them."""
    from .vjp import VJP_INPUTS, VJP_OUTPUTS, DistortionGradient

    run_onnx_checker(path)
    expected_image, expected_gradient = (t.numpy() for t in DistortionGradient(decoder_graph)(latent, target))
    image, gradient = Graph(path, "cpu", VJP_INPUTS, VJP_OUTPUTS)(latent.numpy(), target.numpy())
    if gradient.shape != expected_gradient.shape:
        raise SdliteError(f"{path.name}: onnxruntime gives shape {gradient.shape}, torch {expected_gradient.shape}")
    image_difference = float(np.abs(image - expected_image).max())
    difference = float(np.abs(gradient - expected_gradient).max())
    bound = tolerance * float(np.abs(expected_gradient).max())
    if not difference <= bound or not image_difference <= tolerance:
        raise SdliteError(f"{path.name}: onnxruntime's gradient differs from torch autograd by {difference:.3g} "
                          f"(bound {bound:.3g}), its image by {image_difference:.3g}")
    return {"max_abs_diff": difference, "bound": bound, "image_max_abs_diff": image_difference,
            "relative_to": "max |autograd gradient|", "input_shape": list(latent.shape)}
