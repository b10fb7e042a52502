"""The photos an export calibrates on (`--calibration DIR`), loaded once for every measurement that uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdlite import images
from sdlite.errors import SdliteError

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_PHOTOS = 9  # enough for stable int8 ranges and channel sensitivities; each costs encoder and decoder runs


def load_photos(folder: Path, factor: int) -> list[np.ndarray]:
    """Up to MAX_PHOTOS photos from `folder` in name order, as NCHW arrays in [0, 1] padded to `factor`."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if len(files) < 2:
        raise SdliteError(f"--calibration {folder}: needs at least two .png/.jpg/.webp pictures")
    return [images.to_array(images.open_image(path), factor) for path in files[:MAX_PHOTOS]]


def center_crop(array: np.ndarray, side: int) -> np.ndarray:
    height, width = array.shape[2:]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return np.ascontiguousarray(array[:, :, top:top + side, left:left + side])
