"""A second decoder for .sdc files, written from docs/FORMAT.md alone.

It shares no code with sdlite's container, entropy and quantizer modules and does not use constriction:
it parses the bytes, runs its own range decoder and adaptive model, and gives the image size and the
dequantized latent. The tests hold it against the real decoder, which is what proves the document
complete. Section numbers below refer to docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

MAGIC = b"\x89SDC"
VERSION = 1
HEADER_SIZE = 33
SMALLEST_FILE = HEADER_SIZE + 3 * 4  # two empty blocks and the CRC
MAX_PIXELS = 1 << 28
LARGEST_LEVEL = 2047
PRECISION = 24
WORD_BITS = 32
STATE_BITS = 64
STATE_MASK = (1 << STATE_BITS) - 1
INCREMENT = 16
HALVE_ABOVE = 65536


class FormatError(ValueError):
    """The bytes are not a valid .sdc file (or not one for the given model)."""


def latent_space_id(name: str) -> bytes:
    """Section 2.2: the first 8 bytes of the SHA-256 of the latent space's name in UTF-8."""
    return hashlib.sha256(name.encode("utf-8")).digest()[:8]


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32(data: bytes) -> int:
    """Section 2.3: CRC-32 (reflected polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class Model:
    """What a decoder takes from the model's manifest (and, for method 3, its latent codec's arrays)."""

    latent_space_id: bytes
    channels: int
    downsampling_factor: int
    latent_codec: dict | None = None

    @classmethod
    def from_manifest(cls, manifest: dict, folder=None) -> Model:
        codec = manifest.get("latent_codec")
        arrays = read_safetensors((folder / codec["file"]).read_bytes()) if codec and folder else None
        return cls(latent_space_id(manifest["latent_space"]), manifest["latent_channels"],
                   manifest["downsampling_factor"], arrays)


SAFETENSORS_DTYPES = {"I8": "<i1", "I64": "<i8", "F32": "<f4"}


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """METHODS.md method 3: an 8-byte header length, a JSON header, then the arrays' bytes."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        arrays[name] = np.frombuffer(body[start:end], SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return arrays


@dataclass(frozen=True)
class Container:
    method: int
    latent_space_id: bytes
    width: int
    height: int
    latent_shape: tuple[int, int, int]
    step: np.float32
    quality: int
    model_block: bytes
    payload: bytes


@dataclass(frozen=True)
class Decoded:
    width: int
    height: int
    levels: np.ndarray  # int32, (channels, latent height, latent width)
    latent: np.ndarray  # float32, same shape: what the decoder graph takes (with a batch axis added)


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def read_container(data: bytes) -> Container:
    """Section 2: the header, the two blocks and the CRC, with the container's validity rules."""
    if data[:4] != MAGIC:
        raise FormatError("not an .sdc file (wrong magic)")
    if len(data) < SMALLEST_FILE:
        raise FormatError("truncated: shorter than the smallest .sdc file")
    if data[4] != VERSION:
        raise FormatError(f"unsupported version {data[4]}")
    position = HEADER_SIZE
    blocks = []
    for _ in range(2):
        if len(data) < position + 4:
            raise FormatError("truncated: a block length is missing")
        length = _u32(data, position)
        if len(data) < position + 4 + length:
            raise FormatError("truncated: a block is cut short")
        blocks.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    if len(data) != position + 4:
        raise FormatError("truncated: the CRC is missing" if len(data) < position + 4 else "bytes after the CRC")
    if _u32(data, position) != crc32(data[:position]):
        raise FormatError("CRC mismatch")
    method = data[5]
    if method not in METHODS:
        raise FormatError(f"unsupported coding method {method}")
    width, height = _u32(data, 14), _u32(data, 18)
    shape = (_u16(data, 22), _u16(data, 24), _u16(data, 26))
    if min(width, height, *shape) == 0:
        raise FormatError("an image or latent dimension is zero")
    (step,) = struct.unpack_from("<f", data, 28)
    if not 0 < step < float("inf") or data[32] > 100:
        raise FormatError("step not finite and above zero, or quality above 100")
    return Container(method, bytes(data[6:14]), width, height, shape, np.float32(step), data[32], *blocks)


def check_fits(container: Container, model: Model) -> None:
    """Section 2.4: the rules that need the model."""
    if container.latent_space_id != model.latent_space_id:
        raise FormatError("made for another latent space")
    if container.width * container.height > MAX_PIXELS:
        raise FormatError("more pixels than a decoder accepts")
    factor = model.downsampling_factor
    expected = (model.channels, -(-container.height // factor), -(-container.width // factor))
    if container.latent_shape != expected:
        raise FormatError(f"latent shape {container.latent_shape} does not fit the image (expected {expected})")


def decode(data: bytes, model: Model) -> Decoded:
    container = read_container(bytes(data))
    check_fits(container, model)
    levels, latent = METHODS[container.method](container, model)
    return Decoded(container.width, container.height, levels, latent)


def lazy_categorical_cumulative(probabilities: list[float]) -> list[int]:
    """Section 4.1: the fixed-point cumulative C(0..n) of binary64 probabilities, C(n) = 2^24."""
    n = len(probabilities)
    partial_sums = list(accumulate(probabilities, initial=0.0))  # left to right, each sum rounded
    scale = float((1 << PRECISION) - n) / partial_sums[-1]
    return [int(partial_sums[s] * scale) + s for s in range(n)] + [1 << PRECISION]


class RangeDecoder:
    """Section 4.2: 32-bit words, 64-bit state."""

    def __init__(self, words: list[int]):
        self.words = words
        self.next_word = 0
        self.lower = 0
        self.range = STATE_MASK
        self.point = 0
        for _ in range(STATE_BITS // WORD_BITS):
            self.point = (self.point << WORD_BITS) | self._read_word()

    def _read_word(self) -> int:
        if self.next_word == len(self.words):
            return 0  # past the end the stream reads as zeros
        self.next_word += 1
        return self.words[self.next_word - 1]

    def exhausted(self) -> bool:
        """constriction's maybe_exhausted(): every word read, and what is left of the point could be
        the encoder's padding (at most 2^33 - 1 above lower), or nothing was ever decoded."""
        padding = (1 << (STATE_BITS - WORD_BITS + 1)) - 1
        return self.next_word == len(self.words) and (
            self.range == STATE_MASK or (self.point - self.lower) & STATE_MASK < padding)

    def decode(self, cumulative: list[int]) -> int:
        scale = self.range >> PRECISION
        quantile = ((self.point - self.lower) & STATE_MASK) // scale
        if quantile >= 1 << PRECISION:
            raise FormatError("the payload cannot be decoded")
        symbol = bisect_right(cumulative, quantile) - 1
        self.lower = (self.lower + scale * cumulative[symbol]) & STATE_MASK
        self.range = scale * (cumulative[symbol + 1] - cumulative[symbol])
        if self.range < 1 << (STATE_BITS - WORD_BITS):
            self.lower = (self.lower << WORD_BITS) & STATE_MASK
            self.range <<= WORD_BITS
            self.point = ((self.point << WORD_BITS) & STATE_MASK) | self._read_word()
        return symbol


def _read_varints(block: bytes, count: int) -> list[int]:
    values, position = [], 0
    for _ in range(count):
        value = 0
        for index in range(5):
            if position == len(block):
                raise FormatError("model block truncated")
            byte = block[position]
            position += 1
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                break
        else:
            raise FormatError("a varint longer than 5 bytes")
        values.append(value)
    if position != len(block):
        raise FormatError("bytes after the model block's varints")
    return values


def _unzigzag(value: int) -> int:
    return value >> 1 if value % 2 == 0 else -((value + 1) >> 1)


def decode_method_0(container: Container, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """Section 3: uniform step, adaptive categorical range coding."""
    channels, height, width = container.latent_shape
    values = _read_varints(container.model_block, 2 * channels)
    lowest = [_unzigzag(v) for v in values[0::2]]
    sizes = values[1::2]
    for low, size in zip(lowest, sizes):
        if size < 1 or low < -LARGEST_LEVEL or low + size - 1 > LARGEST_LEVEL:
            raise FormatError("a channel's level range is out of bounds")
    if len(container.payload) % 4:
        raise FormatError("the payload is not a whole number of words")
    words = [_u32(container.payload, offset) for offset in range(0, len(container.payload), 4)]
    decoder = RangeDecoder(words)
    levels = np.empty(container.latent_shape, dtype=np.int32)
    levels[:] = np.array(lowest, dtype=np.int32)[:, None, None]
    counts = [[1] * size for size in sizes]
    for y in range(height):
        for c in range(channels):
            if sizes[c] == 1:
                continue
            total = sum(counts[c])  # integers: exact
            cumulative = lazy_categorical_cumulative([count / total for count in counts[c]])
            row = [decoder.decode(cumulative) for _ in range(width)]
            levels[c, y] += np.array(row, dtype=np.int32)
            for symbol in row:
                counts[c][symbol] += INCREMENT
            if sum(counts[c]) > HALVE_ABOVE:
                counts[c] = [(count + 1) // 2 for count in counts[c]]
    if not decoder.exhausted() or (words and all(size == 1 for size in sizes)):
        raise FormatError("payload words left unread")
    with np.errstate(over="ignore"):
        latent = levels.astype(np.float32) * container.step
    if not np.isfinite(latent).all():
        raise FormatError("the step overflows the latent")
    return levels, latent


HYPER_RANGE = 24
UNIFORM_CUMULATIVE = lazy_categorical_cumulative([1.0] * (2 * LARGEST_LEVEL + 1))


def _decode_run(decoder: RangeDecoder, frequencies: np.ndarray, lowest: int, count: int) -> list[int]:
    """METHODS.md 'Coding with a table': count symbols, then each escaped value uniformly, in order."""
    cumulative = lazy_categorical_cumulative([float(f) for f in frequencies])
    escape = len(frequencies) - 1
    symbols = [decoder.decode(cumulative) for _ in range(count)]
    values = [lowest + s for s in symbols]
    for position, symbol in enumerate(symbols):
        if symbol == escape:
            values[position] = decoder.decode(UNIFORM_CUMULATIVE) - LARGEST_LEVEL
    return values


def _integer_layer(x: np.ndarray, arrays: dict, number: int) -> np.ndarray:
    weight = arrays[f"hyper_synthesis.{number}.weight"].astype(np.int64)
    bias = arrays[f"hyper_synthesis.{number}.bias"].astype(np.int64)
    multiplier = arrays[f"hyper_synthesis.{number}.multiplier"].astype(np.int64)
    shift, relu, upsample = (int(v) for v in arrays[f"hyper_synthesis.{number}.flags"])
    outputs, inputs, kernel, _ = weight.shape
    pad = kernel // 2
    channels, height, width = x.shape
    padded = np.zeros((channels, height + 2 * pad, width + 2 * pad), np.int64)
    padded[:, pad : pad + height, pad : pad + width] = x
    sums = np.zeros((outputs, height, width), np.int64) + bias[:, None, None]
    for dy in range(kernel):
        for dx in range(kernel):
            window = padded[:, dy : dy + height, dx : dx + width]
            sums += np.einsum("oi,ihw->ohw", weight[:, :, dy, dx], window)  # int64: exact
    out = (sums * multiplier[:, None, None] + (1 << (shift - 1))) >> shift  # >> on int64 floors
    out = np.clip(out, 0, 32767) if relu else np.clip(out, -(1 << 24), 1 << 24)
    if upsample:
        out = out.reshape(-1, 2, 2, height, width).transpose(0, 3, 1, 4, 2).reshape(-1, 2 * height, 2 * width)
    return out


def decode_method_3(container: Container, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """METHODS.md method 3: learned, mean-scale hyperprior with integer hyper-synthesis."""
    arrays = model.latent_codec
    if arrays is None:
        raise FormatError("the model has no latent codec")
    if len(container.model_block) != 2:
        raise FormatError("the model block is not 2 bytes")
    level_code = _u16(container.model_block, 0)
    log_inverse_gain = arrays["log_inverse_gain"].astype(np.float64)
    levels_count, code_channels = log_inverse_gain.shape
    if level_code > (levels_count - 1) * 4096:
        raise FormatError("the rate level is beyond the model's levels")
    if len(container.payload) % 4:
        raise FormatError("the payload is not a whole number of words")
    _, height, width = container.latent_shape
    padded_height, padded_width = 8 * -(-height // 8), 8 * -(-width // 8)
    decoder = RangeDecoder([_u32(container.payload, o) for o in range(0, len(container.payload), 4)])
    hyper = arrays["hyper_frequencies"]
    z = np.array([_decode_run(decoder, row, -HYPER_RANGE, padded_height * padded_width // 64) for row in hyper],
                 np.int64).reshape(len(hyper), padded_height // 8, padded_width // 8)
    x, number = z, 0
    while f"hyper_synthesis.{number}.weight" in arrays:
        x = _integer_layer(x, arrays, number)
        number += 1
    mean, log_scale = x[:code_channels], x[code_channels:]
    index = np.searchsorted(arrays["scale_thresholds"], log_scale, side="right")
    tails = [math.ceil(8.0 * math.exp(math.log(0.11) + k * (math.log(64.0) - math.log(0.11)) / 63)) + 1
             for k in range(64)]
    tables = np.split(arrays["scale_frequencies"], np.cumsum([2 * t + 2 for t in tails])[:-1])
    flat_index, flat_levels = index.ravel(), np.zeros(index.size, np.int64)
    for k in range(64):
        where = np.flatnonzero(flat_index == k)
        if where.size:
            flat_levels[where] = _decode_run(decoder, tables[k], -tails[k], where.size)
    if not decoder.exhausted():
        raise FormatError("payload words left unread")
    levels = flat_levels.reshape(index.shape).astype(np.int32)
    code = levels.astype(np.float32) + mean.astype(np.float32) / np.float32(64)
    level = level_code / 4096
    low = min(int(level), levels_count - 2)
    fraction = level - low
    gain = np.exp(log_inverse_gain[low] * (1 - fraction) + log_inverse_gain[low + 1] * fraction).astype(np.float32)
    return levels, code * gain[:, None, None]


METHODS = {0: decode_method_0, 3: decode_method_3}
