"""Scalar quantization of the latent: the quality knob, the global step and the per-channel steps."""

from __future__ import annotations

import math

from typing import ClassVar

import numpy as np

from ..errors import SdliteError
from .base import Coded, EffortSearch, Method, ModelParts, finite

# Latents are scaled to about unit variance by the export, so one scale of steps serves every model. It
# spans the range where the codec is of use (docs/CLI.md has the sizes and PSNR on Kodak): quality 0
# (step 5) is the smallest file whose picture is still recognisable (coarser steps decode to a grid);
# quality 100 (step 1/4) is where TAEF2 stops gaining (finer steps add under 0.2 dB); the default, 50
# (step 5/2), gives about 0.3 bits per pixel, the top of the range where the codec competes with JPEG
# (JPEG cannot make files below about 0.15 bpp, and pulls ahead in PSNR above 0.3).
# The step falls one octave from 0 to 50 and a decade from 50 to 100: at coarse steps a small change
# of step changes the picture a lot, at fine steps little, and this keeps the PSNR gained per point of
# quality about even over the scale.
COARSEST_STEP = 5.0
DEFAULT_STEP = 2.5
FINEST_STEP = 0.25
LARGEST_LEVEL = 2047  # the coder's alphabet is bounded so a hostile header cannot ask for huge tables

# A channel's step is the global step times 2^(code / STEP_CODES_PER_OCTAVE); the codes travel in the
# file. The fractions are written out, not computed with pow(), so every machine gets the same steps.
STEP_CODES_PER_OCTAVE = 8
_OCTAVE_FRACTIONS = (1.0, 1.0905077326652577, 1.189207115002721, 1.2968395546510096,
                     1.4142135623730951, 1.5422108254079407, 1.681792830507429, 1.8340080864093424)
LARGEST_STEP_CODE = 4 * STEP_CODES_PER_OCTAVE  # channel steps within 1/16 .. 16 of the global step


def step_for_quality(quality: float) -> np.float32:
    """The global step: log-linear from COARSEST_STEP at 0 to DEFAULT_STEP at 50, and on to FINEST_STEP at 100."""
    if not 0 <= quality <= 100:
        raise SdliteError(f"quality must be between 0 and 100, got {quality}")
    if quality <= 50:
        return np.float32(COARSEST_STEP * (DEFAULT_STEP / COARSEST_STEP) ** (quality / 50))
    return np.float32(DEFAULT_STEP * (FINEST_STEP / DEFAULT_STEP) ** ((quality - 50) / 50))


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


class SteppedMethod(Method):
    """A method that rounds the latent at the quality's global step times each channel's step: its
    `coder` fits a model to the levels, codes them and dequantizes them."""

    coder: ClassVar[type]
    channel_steps_used: ClassVar[bool] = True
    supports_effort = True

    def __init__(self, model: ModelParts):
        super().__init__(model)
        channels = model.manifest.latent_channels
        # computed once per model, not once per file: rate control packs many times
        self.step_codes = (step_codes(model.manifest.channel_sensitivity, channels) if self.channel_steps_used
                           else np.zeros(channels, np.int8))

    def encode(self, latent: np.ndarray, quality: float) -> Coded:
        step = step_for_quality(quality)
        model, levels = self.coder.quantize(latent, step, self.step_codes)
        return Coded(float(step), model.to_bytes(), model.compress(levels))

    def decode(self, model_block: bytes, payload: bytes, shape: tuple[int, int, int], step: float) -> np.ndarray:
        model = self.coder.from_bytes(model_block, shape)
        levels = model.decompress(payload, shape)
        with np.errstate(over="ignore", invalid="ignore"):  # a forged step: refused by finite()
            return finite(model.dequantize(levels, step), step)

    def effort_search(self, latent: np.ndarray, quality: float) -> EffortSearch:
        step = step_for_quality(quality)

        def quantize(candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            model, levels = self.coder.quantize(candidate, step, self.step_codes)
            return model.dequantize(levels, step), levels

        return EffortSearch(latent, quantize, channel_steps(step, self.step_codes), "decoder_vjp", 1,
                            lambda candidate: self.encode(candidate, quality))
