"""Uniform scalar quantization of the latent, with one step size chosen by the quality knob."""

from __future__ import annotations

import numpy as np

from .errors import SdliteError

# Latents are scaled to about unit variance by the export, so one table of steps serves every model:
# quality 100 is near-lossless in the latent (step 1/64), quality 0 keeps little more than the sign.
FINEST_STEP = 1.0 / 64.0
QUALITY_PER_OCTAVE = 12.5
LARGEST_LEVEL = 2047  # the coder's alphabet is bounded so a hostile header cannot ask for huge tables


def step_for_quality(quality: int) -> np.float32:
    if not 0 <= quality <= 100:
        raise SdliteError(f"quality must be between 0 and 100, got {quality}")
    return np.float32(FINEST_STEP * 2.0 ** ((100 - quality) / QUALITY_PER_OCTAVE))


def quantize(latent: np.ndarray, step: np.float32) -> np.ndarray:
    levels = np.rint(latent.astype(np.float32) / step)
    return np.clip(levels, -LARGEST_LEVEL, LARGEST_LEVEL).astype(np.int32)


def dequantize(levels: np.ndarray, step: np.float32) -> np.ndarray:
    return levels.astype(np.float32) * np.float32(step)
