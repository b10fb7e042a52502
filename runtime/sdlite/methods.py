"""The coding methods, by the id that the .sdc header carries: each one a quantizer and an entropy model
in one class with its own parameter serialisation (to_bytes / from_bytes), compress / decompress of
its symbols and dequantize back to a latent."""

from __future__ import annotations

import numpy as np

from . import quantizer
from .entropy import AdaptiveCategorical
from .errors import SdliteError
from .palette import PaletteModel
from .predictive import PredictiveModel

METHODS = {cls.method_id: cls for cls in (AdaptiveCategorical, PaletteModel, PredictiveModel)}
DEFAULT_METHOD = PredictiveModel.name
NAMES = {cls.name: cls for cls in METHODS.values()}


def by_name(name: str):
    if name not in NAMES:
        raise SdliteError(f"unknown method {name!r}: choose one of {', '.join(NAMES)}")
    return NAMES[name]


def quantize(method, latent: np.ndarray, quality: float, step_codes: np.ndarray):
    """(model, symbols, global step) for a latent at a quality in [0, 100] (fractions allowed)."""
    if method is PaletteModel:
        model, symbols = PaletteModel.quantize(latent, quality)
        return model, symbols, np.float32(1.0)  # the palette needs no step; the header records 1
    step = quantizer.step_for_quality(quality)
    model, symbols = method.quantize(latent, step, step_codes)
    return model, symbols, step
