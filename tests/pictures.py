"""Test pictures made on the fly: smooth enough to compress, varied enough to show errors."""

from __future__ import annotations

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(6 * x + 2 * y + phase) * 0.4 + 0.5 for phase in rng.uniform(0, 3, 3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 0.03, (height, width, 3))
    return Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8), "RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float(np.mean(difference**2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
