"""Method 2, the default: predictive coding of the latent with per-channel steps and a context model.

Quantizer: each channel has its own step (the global step times a multiplier copied into the file
from the model's measured channel sensitivities). Each latent row is predicted from the row above as
the decoder reconstructed it (closed loop, three taps per channel around the channel's mean), and
only the prediction's residual is quantized, with a dead zone around zero. The decoder puts a
nonzero level back at (|level| - offset) steps, the offset being the centroid correction that the
encoder measured and stored per channel.

Entropy model: a whole latent row (every channel) is coded in one call. A level's context is the
activity of the levels above it (integers only) and its channel's running mean magnitude; each
context has adaptive integer counts over one alphabet [-largest, largest], so the decoder rebuilds
the encoder's tables exactly. The prediction and reconstruction are float32 element-wise products
and sums in a fixed order (no dot products, no libm), equally reproducible.
"""

from __future__ import annotations

import struct

import constriction
import numpy as np

from .. import rangedecode
from ..errors import SdliteError
from . import quantizer


WEIGHT_UNIT = 64  # prediction taps in 1/64; their magnitudes sum to at most 1, so rows cannot blow up
MEAN_UNIT = 32  # channel means in 1/32 of the latent's unit
OFFSET_UNIT = 256  # reconstruction offsets in 1/256 of a step, at most half a step
LARGEST_RESIDUAL = 255
DEAD_ZONE = 0.62  # a residual is rounded up only past 0.62 steps: zeros are cheap, small errors are not

# Context: activity of the levels above (2 x above + above-left + above-right + two rows up), bucketed,
# times the channel's running mean |level| so far, bucketed (in 1/16).
ACTIVITY_EDGES = np.array([1, 2, 3, 4, 6, 8, 11, 15, 20, 28, 40])
CHANNEL_EDGES = np.array([1, 2, 4, 6, 9, 13, 18, 26, 36, 52, 72])
CONTEXTS = (len(ACTIVITY_EDGES) + 1) * (len(CHANNEL_EDGES) + 1)
CHUNK_ENTRIES = 1 << 20  # probability-table entries per coder call: bounds memory on wide latents
INCREMENT = 24
RESCALE_ABOVE = 1 << 16
FAMILY = constriction.stream.model.Categorical(perfect=False)

_PARAMS = struct.Struct("<H")


class PredictiveModel:
    def __init__(self, step_codes, means, weights, offsets, largest: int):
        self.step_codes = np.asarray(step_codes, np.int8)
        self.means = np.asarray(means, np.int8)
        self.weights = np.asarray(weights, np.int8).reshape(-1, 3)
        self.offsets = np.asarray(offsets, np.uint8)
        self.largest = int(largest)

    # -- parameters --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return (_PARAMS.pack(self.largest) + self.step_codes.tobytes() + self.means.tobytes()
                + self.offsets.tobytes() + self.weights.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes, shape: tuple[int, int, int]) -> PredictiveModel:
        channels = shape[0]
        if len(data) != _PARAMS.size + 6 * channels:
            raise SdliteError("corrupt file: the predictive model's parameters have the wrong length")
        (largest,) = _PARAMS.unpack_from(data)
        fields = np.frombuffer(data, np.uint8, offset=_PARAMS.size)
        step_codes, means, offsets = (fields[i * channels:(i + 1) * channels] for i in range(3))
        model = cls(step_codes.view(np.int8), means.view(np.int8), fields[3 * channels:].view(np.int8),
                    offsets, largest)
        if (largest > LARGEST_RESIDUAL or np.any(np.abs(model.step_codes.astype(int)) > quantizer.LARGEST_STEP_CODE)
                or np.any(model.offsets > OFFSET_UNIT // 2)
                or np.any(np.abs(model.weights.astype(int)).sum(axis=1) > WEIGHT_UNIT)):
            raise SdliteError("corrupt file: the predictive model's parameters are out of bounds")
        return model

    # -- quantizer ---------------------------------------------------------------------------------

    @classmethod
    def quantize(cls, latent: np.ndarray, step: float, step_codes: np.ndarray) -> tuple[PredictiveModel, np.ndarray]:
        """The model and levels for a latent (C, H, W) at a global step. A channel whose residuals would
        need more than LARGEST_RESIDUAL steps gets a coarser step (its code raised in the file) instead
        of clipped levels: clipping would move the decoded latent away from the encoder's, further the
        finer the step, so that a higher quality would give a worse picture."""
        latent = latent.astype(np.float32)
        codes = np.asarray(step_codes, np.int8)
        while True:
            model, levels, residuals = cls._fit(latent, step, codes)
            widened = _codes_within_alphabet(codes, residuals)
            if np.array_equal(widened, codes):
                return model, levels
            codes = widened

    @classmethod
    def _fit(cls, latent: np.ndarray, step: float, step_codes: np.ndarray):
        """Two passes: the second refits the taps on the first pass's reconstruction (what the decoder
        predicts from) and sets the offsets. The model, its levels and the residuals in steps."""
        channels = latent.shape[0]
        means = np.clip(np.rint(latent.mean(axis=(1, 2)) * MEAN_UNIT), -127, 127).astype(np.int8)
        model = cls(step_codes, means, _fit_taps(latent, latent, means), np.zeros(channels, np.uint8), LARGEST_RESIDUAL)
        levels, reconstruction, residuals = model._closed_loop(latent, step)
        model.weights = _fit_taps(latent, reconstruction, means)
        model.offsets = _centroid_offsets(levels, residuals)
        levels, _, residuals = model._closed_loop(latent, step)
        model.largest = int(np.abs(levels).max(initial=0))
        return model, levels, residuals

    def dequantize(self, levels: np.ndarray, step: float) -> np.ndarray:
        _, reconstruction, _ = self._closed_loop(None, step, levels)
        if not np.isfinite(reconstruction).all():
            raise SdliteError("corrupt file: the latent cannot be reconstructed (step out of range)")
        return reconstruction

    def _closed_loop(self, latent: np.ndarray | None, step: float, levels: np.ndarray | None = None):
        """Row by row: predict from the reconstructed row above, then quantize `latent` (encoder) or take
        `levels` (decoder), and reconstruct. Returns levels, reconstruction and the encoder's residuals."""
        shape = latent.shape if latent is not None else levels.shape
        channels, height, width = shape
        steps = quantizer.channel_steps(step, self.step_codes)[:, None]
        means = (self.means.astype(np.float32) / np.float32(MEAN_UNIT))[:, None]
        taps = self.weights.astype(np.float32) / np.float32(WEIGHT_UNIT)
        offsets = (self.offsets.astype(np.float32) / np.float32(OFFSET_UNIT))[:, None]
        reconstruction = np.empty(shape, np.float32)
        residuals = np.zeros(shape, np.float32) if latent is not None else None
        if levels is None:
            levels = np.empty(shape, np.int32)
        prediction = np.broadcast_to(means, (channels, width))
        for y in range(height):
            if y:
                above = reconstruction[:, y - 1] - means
                left = np.concatenate([above[:, :1], above[:, :-1]], axis=1)
                right = np.concatenate([above[:, 1:], above[:, -1:]], axis=1)
                prediction = taps[:, 0:1] * left
                prediction = prediction + taps[:, 1:2] * above
                prediction = prediction + taps[:, 2:3] * right
                prediction = prediction + means
            if latent is not None:
                residual = (latent[:, y] - prediction) / steps
                magnitude = np.floor(np.abs(residual) + np.float32(1 - DEAD_ZONE))
                levels[:, y] = np.sign(residual) * np.minimum(magnitude, LARGEST_RESIDUAL)
                residuals[:, y] = residual
            row = levels[:, y]
            value = row.astype(np.float32) - np.sign(row).astype(np.float32) * offsets
            reconstruction[:, y] = prediction + steps * value
        return levels, reconstruction, residuals

    # -- entropy coder -----------------------------------------------------------------------------

    def compress(self, levels: np.ndarray) -> bytes:
        if self.largest == 0:
            return b""  # every level is zero: the header says it all
        rangedecode.check_work(rangedecode.predictive_table_entries(levels.shape, self.largest), writing=True)
        encoder = constriction.stream.queue.RangeEncoder()
        tables = _Tables(self.largest, levels.shape)
        for y in range(levels.shape[1]):
            contexts = tables.contexts(levels, y)
            symbols = (levels[:, y].ravel() + self.largest).astype(np.int32)
            for part in tables.chunks(len(symbols)):
                encoder.encode(symbols[part], FAMILY, tables.probabilities(contexts[part]))
            tables.update(levels, y, contexts, symbols)
        return encoder.get_compressed().astype("<u4").tobytes()

    def decompress(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        if self.largest == 0:
            if payload:
                raise SdliteError("corrupt file: the payload holds more data than the latent shape in the header")
            return np.zeros(shape, np.int32)
        rangedecode.check_work(rangedecode.predictive_table_entries(shape, self.largest))
        return rangedecode.decode_predictive(payload, shape, self.largest)


class _Tables:
    """Adaptive integer counts per context, and the contexts of one row from the rows above it."""

    def __init__(self, largest: int, shape: tuple[int, int, int]):
        self.counts = np.ones((CONTEXTS, 2 * largest + 1), np.int64)
        self.magnitude_sum = np.zeros(shape[0], np.int64)
        self.seen = 0
        self.width = shape[2]

    def contexts(self, levels: np.ndarray, y: int) -> np.ndarray:
        channels, _, width = levels.shape
        activity = np.zeros((channels, width), np.int64)
        if y >= 1:
            above = np.abs(levels[:, y - 1]).astype(np.int64)
            activity += 2 * above
            activity[:, 1:] += above[:, :-1]
            activity[:, :-1] += above[:, 1:]
        if y >= 2:
            activity += np.abs(levels[:, y - 2])
        channel_mean = 16 * self.magnitude_sum // max(self.seen, 1)
        channel_class = np.searchsorted(CHANNEL_EDGES, channel_mean, side="right")
        activity_class = np.searchsorted(ACTIVITY_EDGES, activity, side="right")
        return (channel_class[:, None] * (len(ACTIVITY_EDGES) + 1) + activity_class).ravel()

    def chunks(self, count: int) -> list[slice]:
        """Consecutive pieces of a row: the coder's stream is the same whether a row goes in one call or several."""
        size = max(1, CHUNK_ENTRIES // self.counts.shape[1])
        return [slice(start, start + size) for start in range(0, count, size)]

    def probabilities(self, contexts: np.ndarray) -> np.ndarray:
        # constriction normalises each row itself: integer counts as float64 are exact.
        return self.counts[contexts].astype(np.float64)

    def update(self, levels: np.ndarray, y: int, contexts: np.ndarray, symbols: np.ndarray) -> None:
        np.add.at(self.counts, (contexts, symbols), INCREMENT)
        full = self.counts.sum(axis=1) > RESCALE_ABOVE
        self.counts[full] = (self.counts[full] + 1) // 2
        self.magnitude_sum += np.abs(levels[:, y]).sum(axis=1)
        self.seen += self.width


class Predictive(quantizer.SteppedMethod):
    id = 2
    name = "predictive"
    description = "predictive: per-channel steps, row prediction, context-adaptive range coding"
    coder = PredictiveModel


def _fit_taps(target: np.ndarray, source: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Least-squares taps predicting each channel's row from `source`'s row above, rounded to 1/64
    and scaled down so that their magnitudes sum to at most 1."""
    centred_target = target - means.astype(np.float32)[:, None, None] / MEAN_UNIT
    centred_source = source - means.astype(np.float32)[:, None, None] / MEAN_UNIT
    above = centred_source[:, :-1]
    left = np.concatenate([above[:, :, :1], above[:, :, :-1]], axis=2)
    right = np.concatenate([above[:, :, 1:], above[:, :, -1:]], axis=2)
    taps = np.zeros((target.shape[0], 3), np.int8)
    if target.shape[1] < 2:
        return taps
    for channel in range(target.shape[0]):
        features = np.stack([left[channel].ravel(), above[channel].ravel(), right[channel].ravel()], axis=1)
        solution, *_ = np.linalg.lstsq(features.astype(np.float64), centred_target[channel, 1:].ravel(), rcond=None)
        solution /= max(1.0, np.abs(solution).sum())
        taps[channel] = np.trunc(solution * WEIGHT_UNIT)  # truncation keeps the sum of magnitudes <= 1
    return taps


def _codes_within_alphabet(codes: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """The step codes raised, for each channel with a residual beyond the largest level, by the octaves
    (in eighths) that bring it within; no higher than LARGEST_STEP_CODE."""
    peak = np.abs(residuals).max(axis=(1, 2)).astype(np.float64)
    clipped = np.floor(peak + (1 - DEAD_ZONE)) > LARGEST_RESIDUAL
    raise_by = np.ceil(quantizer.STEP_CODES_PER_OCTAVE * np.log2(np.maximum(peak, 1.0) / LARGEST_RESIDUAL))
    raised = codes.astype(np.int64) + np.where(clipped, np.maximum(raise_by, 1), 0).astype(np.int64)
    return np.minimum(raised, quantizer.LARGEST_STEP_CODE).astype(np.int8)


def _centroid_offsets(levels: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Per channel, how far inside its quantization interval the residuals of nonzero levels lie on average."""
    nonzero = levels != 0
    shortfall = np.where(nonzero, np.abs(levels) - np.abs(residuals), 0).sum(axis=(1, 2))
    count = np.maximum(nonzero.sum(axis=(1, 2)), 1)
    return np.clip(np.rint(shortfall / count * OFFSET_UNIT), 0, OFFSET_UNIT // 2).astype(np.uint8)
