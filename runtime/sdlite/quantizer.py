"""Scalar quantization of the latent: the quality knob, the global step and the per-channel steps."""

from __future__ import annotations

import math

import numpy as np

from .errors import SdliteError

# Latents are scaled to about unit variance by the export, so one table of steps serves every model:
# quality 100 is near-lossless in the latent (step 1/64), quality 0 (step 16) keeps only the broadest
# strokes, for files of a few hundredths of a bit per pixel.
FINEST_STEP = 1.0 / 64.0
QUALITY_PER_OCTAVE = 10.0
LARGEST_LEVEL = 2047  # the coder's alphabet is bounded so a hostile header cannot ask for huge tables

# A channel's step is the global step times 2^(code / STEP_CODES_PER_OCTAVE); the codes travel in the
# file. The fractions are written out, not computed with pow(), so every machine gets the same steps.
STEP_CODES_PER_OCTAVE = 8
_OCTAVE_FRACTIONS = (1.0, 1.0905077326652577, 1.189207115002721, 1.2968395546510096,
                     1.4142135623730951, 1.5422108254079407, 1.681792830507429, 1.8340080864093424)
LARGEST_STEP_CODE = 4 * STEP_CODES_PER_OCTAVE  # channel steps within 1/16 .. 16 of the global step


def step_for_quality(quality: float) -> np.float32:
    if not 0 <= quality <= 100:
        raise SdliteError(f"quality must be between 0 and 100, got {quality}")
    return np.float32(FINEST_STEP * 2.0 ** ((100 - quality) / QUALITY_PER_OCTAVE))


def quantize(latent: np.ndarray, step: np.float32) -> np.ndarray:
    levels = np.rint(latent.astype(np.float32) / step)
    return np.clip(levels, -LARGEST_LEVEL, LARGEST_LEVEL).astype(np.int32)


def dequantize(levels: np.ndarray, step: np.float32) -> np.ndarray:
    return levels.astype(np.float32) * np.float32(step)


def step_codes(sensitivity: list[float] | np.ndarray, channels: int) -> np.ndarray:
    """Per-channel step codes (int8) that make each channel's step proportional to 1/sqrt(sensitivity).

    Distortion in the picture is about sum_c sensitivity_c * step_c^2 / 12; for a given rate it is
    least when every channel's term is equal. The geometric mean of the multipliers is 1, so the
    global step keeps its meaning. Without measured sensitivities every channel gets the global step.
    """
    if len(sensitivity) == 0:
        return np.zeros(channels, np.int8)
    log_sensitivity = np.log2(np.asarray(sensitivity, np.float64))
    codes = -0.5 * STEP_CODES_PER_OCTAVE * (log_sensitivity - log_sensitivity.mean())
    return np.clip(np.rint(codes), -LARGEST_STEP_CODE, LARGEST_STEP_CODE).astype(np.int8)


def channel_steps(step: float, codes: np.ndarray) -> np.ndarray:
    """float32 steps, one per channel, the same to the bit on every machine (exact float64 products)."""
    multipliers = [math.ldexp(_OCTAVE_FRACTIONS[code % STEP_CODES_PER_OCTAVE], code // STEP_CODES_PER_OCTAVE)
                   for code in np.asarray(codes, np.int64).tolist()]
    return (np.float64(step) * np.array(multipliers, np.float64)).astype(np.float32)
