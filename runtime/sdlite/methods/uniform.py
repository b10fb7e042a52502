"""Method 0, the naive baseline: one step for every channel, and an adaptive frequency model per latent
channel driving a range coder.

Each channel's levels lie in a range [lowest, lowest + size) that the header carries. Every level
starts with a count of 1; after each latent row the counts of the levels seen are raised, so the model
adapts as it goes, and halved when they grow large, so it keeps adapting. Probabilities come from
integer counts by one IEEE division, which is exact to the bit on every machine: the decoder rebuilds
the very tables the encoder used.
"""

from __future__ import annotations

import numpy as np
import constriction

from .. import rangedecode
from ..errors import SdliteError
from . import quantizer
from .quantizer import LARGEST_LEVEL, SteppedMethod

INCREMENT = 16
RESCALE_ABOVE = 1 << 16
# The lazy categorical quantizes probabilities with one float multiply per entry: exact and fast.
FAMILY = constriction.stream.model.Categorical(perfect=False)


class _Counts:
    def __init__(self, sizes: np.ndarray):
        self.counts = [np.ones(int(size), dtype=np.int64) for size in sizes]

    def table(self, channel: int, width: int) -> np.ndarray:
        counts = self.counts[channel]
        return np.tile(counts / counts.sum(), (width, 1))

    def update(self, channel: int, symbols: np.ndarray) -> None:
        counts = self.counts[channel]
        counts += INCREMENT * np.bincount(symbols, minlength=counts.size)
        if counts.sum() > RESCALE_ABOVE:
            self.counts[channel] = (counts + 1) // 2


class AdaptiveCategorical:
    """Levels of shape (channels, height, width), coded row by row, channel by channel within a row."""

    def __init__(self, lowest: np.ndarray, sizes: np.ndarray):
        self.lowest = np.asarray(lowest, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)

    @classmethod
    def fit(cls, levels: np.ndarray) -> AdaptiveCategorical:
        flat = levels.reshape(levels.shape[0], -1)
        lowest, highest = flat.min(axis=1), flat.max(axis=1)
        return cls(lowest, highest - lowest + 1)

    @classmethod
    def quantize(cls, latent: np.ndarray, step: float, step_codes: np.ndarray) -> tuple[AdaptiveCategorical, np.ndarray]:
        """The baseline ignores the per-channel steps: one step for all channels, plain rounding."""
        levels = quantizer.quantize(latent, np.float32(step))
        return cls.fit(levels), levels

    def dequantize(self, levels: np.ndarray, step: float) -> np.ndarray:
        return quantizer.dequantize(levels, np.float32(step))

    def to_bytes(self) -> bytes:
        out = bytearray()
        for lowest, size in zip(self.lowest, self.sizes):
            out += _varint(_zigzag(int(lowest))) + _varint(int(size))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, shape: tuple[int, int, int]) -> AdaptiveCategorical:
        channels = shape[0]
        values, position = [], 0
        for _ in range(2 * channels):
            value, position = _read_varint(data, position)
            values.append(value)
        if position != len(data):
            raise SdliteError("corrupt file: entropy model parameters have trailing bytes")
        lowest = np.array([_unzigzag(v) for v in values[0::2]], dtype=np.int64)
        sizes = np.array(values[1::2], dtype=np.int64)
        if np.any(sizes < 1) or np.any(lowest < -LARGEST_LEVEL) or np.any(lowest + sizes - 1 > LARGEST_LEVEL):
            raise SdliteError("corrupt file: entropy model ranges are out of bounds")
        return cls(lowest, sizes)

    def _coded_channels(self) -> list[int]:
        """A channel with a single level costs nothing: its range in the header says it all."""
        return [c for c, size in enumerate(self.sizes) if size > 1]

    def compress(self, levels: np.ndarray) -> bytes:
        rangedecode.check_work(rangedecode.adaptive_table_entries(levels.shape, self.sizes), writing=True)
        height, width = levels.shape[1:]
        symbols = (levels - self.lowest[:, None, None]).astype(np.int32)
        encoder = constriction.stream.queue.RangeEncoder()
        counts = _Counts(self.sizes)
        for y in range(height):
            for c in self._coded_channels():
                encoder.encode(symbols[c, y], FAMILY, counts.table(c, width))
                counts.update(c, symbols[c, y])
        return encoder.get_compressed().astype("<u4").tobytes()

    def decompress(self, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        if payload and not self._coded_channels():  # the payload codes more than the header says
            raise SdliteError("corrupt file: the payload holds more data than the latent shape in the header")
        rangedecode.check_work(rangedecode.adaptive_table_entries(shape, self.sizes))
        symbols = rangedecode.decode_adaptive(payload, shape, self.sizes)
        return symbols + self.lowest[:, None, None].astype(np.int32)


class Uniform(SteppedMethod):
    id = 0
    name = "uniform"
    description = "uniform: one step, adaptive order-0 range coding (baseline)"
    coder = AdaptiveCategorical
    channel_steps_used = False


def _zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 35, 7):  # at most 5 bytes: every value here fits 32 bits
        if position >= len(data):
            raise SdliteError("corrupt file: entropy model parameters are truncated")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise SdliteError("corrupt file: an entropy model parameter is too long")
