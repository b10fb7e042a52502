"""Method 1, the seed's method: the latent scaled to 8 bits per channel, reduced to a palette of latent
vectors with Floyd-Steinberg error diffusion, and stored losslessly (palette bytes, then the indices
through the adaptive order-0 range coder).

The seed always used 256 entries (quality 100 here); lower qualities halve the palette every
QUALITY_PER_HALVING points, in powers of two, down to 16 entries at quality 0. Dithering makes a
palette's picture noisy: a palette only a little larger (21 entries against 16, or 4 against 2) can
score lower, so the sizes go by doublings, and not below 16, so that a higher quality never looks worse.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import SdliteError
from .base import Coded, Method
from .uniform import AdaptiveCategorical
LARGEST_PALETTE = 256
SMALLEST_PALETTE = 16
QUALITY_PER_HALVING = 25.0
LATENT_RANGE = 1e4  # a channel's 8-bit range must lie within +-LATENT_RANGE
KMEANS_ROUNDS = 8
KMEANS_SAMPLES = 1 << 15  # the palette is fitted on at most this many latent vectors (evenly spaced)

_HEAD = struct.Struct("<H")


def palette_size(quality: float) -> int:
    doublings = np.rint(np.log2(LARGEST_PALETTE / SMALLEST_PALETTE) - (100 - quality) / QUALITY_PER_HALVING)
    return int(SMALLEST_PALETTE * 2 ** np.clip(doublings, 0, np.log2(LARGEST_PALETTE / SMALLEST_PALETTE)))


class PaletteModel:
    def __init__(self, lowest: np.ndarray, highest: np.ndarray, palette: np.ndarray):
        self.lowest = np.asarray(lowest, np.float32)
        self.highest = np.asarray(highest, np.float32)
        self.palette = np.asarray(palette, np.uint8)  # (entries, channels)

    def to_bytes(self) -> bytes:
        return (_HEAD.pack(len(self.palette)) + self.lowest.astype("<f4").tobytes()
                + self.highest.astype("<f4").tobytes() + self.palette.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes, shape: tuple[int, int, int]) -> PaletteModel:
        channels = shape[0]
        if len(data) < _HEAD.size:
            raise SdliteError("corrupt file: the palette is missing")
        (entries,) = _HEAD.unpack_from(data)
        if not 1 <= entries <= LARGEST_PALETTE or len(data) != _HEAD.size + 8 * channels + entries * channels:
            raise SdliteError("corrupt file: the palette has the wrong size")
        ranges = np.frombuffer(data, "<f4", 2 * channels, _HEAD.size).astype(np.float32)
        lowest, highest = ranges[:channels], ranges[channels:]
        if not (np.all(np.abs(ranges) <= LATENT_RANGE) and np.all(lowest <= highest)):  # also refuses NaN
            raise SdliteError("corrupt file: the palette's latent ranges are invalid")
        palette = np.frombuffer(data, np.uint8, offset=_HEAD.size + 8 * channels).reshape(entries, channels)
        return cls(lowest, highest, palette)

    @classmethod
    def quantize(cls, latent: np.ndarray, quality: float) -> tuple[PaletteModel, np.ndarray]:
        """The palette and the index of each latent position, shaped (1, H, W)."""
        channels, height, width = latent.shape
        lowest = latent.min(axis=(1, 2)).astype(np.float32)
        highest = np.maximum(latent.max(axis=(1, 2)), lowest).astype(np.float32)
        scale = np.where(highest > lowest, 255.0 / (highest - lowest), 0.0)
        eight_bit = np.rint((latent - lowest[:, None, None]) * scale[:, None, None])
        vectors = eight_bit.reshape(channels, -1).T.astype(np.float64)
        palette = _kmeans(vectors[:: max(1, len(vectors) // KMEANS_SAMPLES)], palette_size(quality))
        indices = _dither(eight_bit.transpose(1, 2, 0).astype(np.float64), palette.astype(np.float64))
        return cls(lowest, highest, palette), indices[None]

    def dequantize(self, indices: np.ndarray, step: float) -> np.ndarray:
        if indices.max(initial=0) >= len(self.palette):
            raise SdliteError("corrupt file: a palette index is out of range")
        unit = (self.highest - self.lowest) / np.float32(255)
        vectors = self.palette[indices[0]].astype(np.float32) * unit + self.lowest  # (H, W, C)
        return np.ascontiguousarray(vectors.transpose(2, 0, 1))

    def _index_coder(self) -> AdaptiveCategorical:
        return AdaptiveCategorical(np.zeros(1), np.array([len(self.palette)]))

    def compress(self, indices: np.ndarray) -> bytes:
        return self._index_coder().compress(indices)

    def decompress(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        return self._index_coder().decompress(payload, (1,) + tuple(shape[1:]))


class Palette(Method):
    id = 1
    name = "palette"
    description = "palette: 8-bit latent, dithered palette, lossless indices (the seed's method)"

    def encode(self, latent: np.ndarray, quality: float) -> Coded:
        model, indices = PaletteModel.quantize(latent, quality)
        return Coded(1.0, model.to_bytes(), model.compress(indices))  # the palette needs no step; 1 is written

    def decode(self, model_block: bytes, payload: bytes, shape: tuple[int, int, int], step: float) -> np.ndarray:
        model = PaletteModel.from_bytes(model_block, shape)
        return model.dequantize(model.decompress(payload, shape), step)


def _kmeans(vectors: np.ndarray, entries: int) -> np.ndarray:
    """A palette of `entries` 8-bit vectors: k-means from evenly spaced samples of the brightness order."""
    order = np.argsort(vectors.sum(axis=1), kind="stable")
    centres = vectors[order[np.linspace(0, len(vectors) - 1, entries).astype(int)]].copy()
    for _ in range(KMEANS_ROUNDS):
        nearest = _nearest(vectors, centres)
        for entry in range(entries):
            members = vectors[nearest == entry]
            if len(members):
                centres[entry] = members.mean(axis=0)
    return np.clip(np.rint(centres), 0, 255).astype(np.uint8)


def _nearest(vectors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    distances = (centres**2).sum(axis=1)[None] - 2 * vectors @ centres.T
    return distances.argmin(axis=1)


def _dither(target: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Floyd-Steinberg in latent space: each position takes the nearest entry to its value plus the
    error diffused from earlier positions (7/16 right, 3/16 below left, 5/16 below, 1/16 below right)."""
    height, width, _ = target.shape
    work = target.copy()
    indices = np.empty((height, width), np.int32)
    squared = (palette**2).sum(axis=1)
    for y in range(height):
        for x in range(width):
            value = work[y, x]
            index = int((squared - 2 * palette @ value).argmin())
            indices[y, x] = index
            error = value - palette[index]
            if x + 1 < width:
                work[y, x + 1] += error * (7 / 16)
            if y + 1 < height:
                if x:
                    work[y + 1, x - 1] += error * (3 / 16)
                work[y + 1, x] += error * (5 / 16)
                if x + 1 < width:
                    work[y + 1, x + 1] += error * (1 / 16)
    return indices
