"""Method 3, learned: a trained transform of the latent with a mean-scale hyperprior (docs/METHODS.md).

Coding: the latent, padded to a multiple of 8 cells, goes through the analysis graph to y (1/16 of the
picture); y times the gain of the rate level goes through the hyper-analysis graph to z (1/64), which
is rounded and coded with one fixed table per channel. From z alone the exact integer hyper-synthesis
gives every element of y a mean (in 1/MEAN_UNITS) and a scale index; y minus its mean is rounded and
coded with its scale's table. Decoding needs no float arithmetic until the levels are known: the
dequantized code times the inverse gain goes through the synthesis graph back to a latent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays

from ..errors import SdliteError
from ..manifest import Manifest
from .base import Coded, EffortSearch, Method, ModelParts, RunGraph
from .integer_network import IntegerNetwork
from .quantizer import LARGEST_LEVEL
from .tables import HYPER_RANGE, SCALE_COUNT, FrequencyTable, check_frequencies, decode_values, encode_values, tail

MEAN_UNITS = 64
LOG_SCALE_UNITS = 256
LEVEL_UNITS = 4096  # the model block's rate level, in 1/LEVEL_UNITS of a level
GRID = 8  # the latent is padded to a multiple of this many cells: y is at 1/2 of it, z at 1/8
_BLOCK = struct.Struct("<H")


@dataclass
class LatentCodecParameters:
    """What the model folder's latent_codec.safetensors holds for the runtime."""

    hyper_synthesis: IntegerNetwork
    hyper_tables: list[FrequencyTable]  # one per channel of z
    scale_tables: list[FrequencyTable]  # one per scale index
    scale_thresholds: np.ndarray  # a log scale (1/LOG_SCALE_UNITS) of v has index count(thresholds <= v)
    log_gain: np.ndarray  # levels x code channels
    log_inverse_gain: np.ndarray

    @property
    def levels(self) -> int:
        return len(self.log_gain)

    @property
    def code_channels(self) -> int:
        return self.log_gain.shape[1]

    def gain(self, level: float, inverse: bool = False) -> np.ndarray:
        """The gain vector at a fractional level, interpolated geometrically (float32)."""
        table = (self.log_inverse_gain if inverse else self.log_gain).astype(np.float64)
        low = min(int(level), self.levels - 2)
        fraction = level - low
        return np.exp(table[low] * (1 - fraction) + table[low + 1] * fraction).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = self.hyper_synthesis.to_arrays("hyper_synthesis")
        arrays["hyper_frequencies"] = np.stack([t.frequencies for t in self.hyper_tables])
        arrays["scale_frequencies"] = np.concatenate([t.frequencies for t in self.scale_tables])
        arrays["scale_thresholds"] = self.scale_thresholds.astype(np.int64)
        arrays["log_gain"] = self.log_gain.astype(np.float32)
        arrays["log_inverse_gain"] = self.log_inverse_gain.astype(np.float32)
        return arrays

    @classmethod
    def from_bytes(cls, data: bytes) -> LatentCodecParameters:
        try:
            arrays = load_arrays(data)
        except (SafetensorError, ValueError, OSError) as exc:
            raise SdliteError(f"the latent codec's parameters cannot be read ({exc})") from None
        required = ("hyper_frequencies", "scale_frequencies", "scale_thresholds", "log_gain", "log_inverse_gain")
        if any(name not in arrays for name in required):
            raise SdliteError("the latent codec's parameters are incomplete")
        network = IntegerNetwork.from_arrays(arrays, "hyper_synthesis")
        hyper = np.asarray(arrays["hyper_frequencies"], np.int64)
        if hyper.ndim != 2 or hyper.shape[1] != 2 * HYPER_RANGE + 2 or hyper.shape[0] != network.layers[0].weight.shape[1]:
            raise SdliteError("the latent codec's hyper-prior tables do not fit its network")
        for row in hyper:
            check_frequencies(row, "hyper-prior table")
        flat = np.asarray(arrays["scale_frequencies"], np.int64)
        sizes = [2 * tail(k) + 2 for k in range(SCALE_COUNT)]
        if flat.shape != (sum(sizes),):
            raise SdliteError("the latent codec's scale tables do not have the sizes of its scales")
        scale_tables = []
        for k, piece in enumerate(np.split(flat, np.cumsum(sizes)[:-1])):
            check_frequencies(piece, "scale table")
            scale_tables.append(FrequencyTable(piece, -tail(k)))
        thresholds = np.asarray(arrays["scale_thresholds"], np.int64)
        log_gain, log_inverse_gain = (np.asarray(arrays[n], np.float32) for n in ("log_gain", "log_inverse_gain"))
        code_channels = network.layers[-1].weight.shape[0] // 2
        if (thresholds.shape != (SCALE_COUNT - 1,) or np.any(np.diff(thresholds) < 0)
                or log_gain.ndim != 2 or log_gain.shape[0] < 2 or log_gain.shape[1] != code_channels
                or log_inverse_gain.shape != log_gain.shape
                or not (np.isfinite(log_gain).all() and np.isfinite(log_inverse_gain).all())
                or np.abs(log_gain).max() > 20 or np.abs(log_inverse_gain).max() > 20):
            raise SdliteError("the latent codec's scales or gains are malformed")
        return cls(network, [FrequencyTable(row, -HYPER_RANGE) for row in hyper], scale_tables, thresholds,
                   log_gain, log_inverse_gain)


@dataclass(frozen=True)
class Analysed:
    level_code: int
    gained_code: np.ndarray  # y times the level's gain, before rounding
    z_levels: np.ndarray
    mean: np.ndarray  # float32, exact: the integer means over MEAN_UNITS
    index: np.ndarray  # each element's scale table


def padded_grid(height: int, width: int) -> tuple[int, int]:
    return -(-height // GRID) * GRID, -(-width // GRID) * GRID


class LearnedCode:
    """One latent codec bound to its model's graphs."""

    def __init__(self, parameters: LatentCodecParameters, run_graph: RunGraph):
        self.parameters = parameters
        self.run_graph = run_graph

    def level_for_quality(self, quality: float) -> float:
        return (self.parameters.levels - 1) * quality / 100

    def mean_and_scale_index(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.parameters.hyper_synthesis(z)
        channels = self.parameters.code_channels
        if out.shape[0] != 2 * channels:
            raise SdliteError("the latent codec's integer network does not give a mean and scale per channel")
        return out[:channels], np.searchsorted(self.parameters.scale_thresholds, out[channels:], side="right")

    def analyse(self, latent: np.ndarray, quality: float) -> Analysed:
        """The latent (C, H, W) analysed at a quality: its gained code and what z decides."""
        level_code = round(self.level_for_quality(quality) * LEVEL_UNITS)
        height, width = latent.shape[1:]
        padded_height, padded_width = padded_grid(height, width)
        padded = np.pad(latent, ((0, 0), (0, padded_height - height), (0, padded_width - width)), mode="edge")
        y = self.run_graph("analysis", padded[None].astype(np.float32))[0]
        y *= self.parameters.gain(level_code / LEVEL_UNITS)[:, None, None]
        z = self.run_graph("hyper_analysis", y[None])[0]
        z_levels = np.clip(np.rint(z), -LARGEST_LEVEL, LARGEST_LEVEL).astype(np.int64)
        mean, index = self.mean_and_scale_index(z_levels)
        return Analysed(level_code, y, z_levels, mean.astype(np.float32) / np.float32(MEAN_UNITS), index)

    def write(self, analysed: Analysed, gained_code: np.ndarray) -> tuple[bytes, bytes]:
        """(model block, payload) of a gained code, rounded about the means that z decided."""
        levels = np.clip(np.rint(gained_code - analysed.mean), -LARGEST_LEVEL, LARGEST_LEVEL).astype(np.int64)
        encoder = constriction.stream.queue.RangeEncoder()
        for channel, table in enumerate(self.parameters.hyper_tables):
            encode_values(encoder, table, analysed.z_levels[channel].ravel())
        flat_levels, flat_index = levels.ravel(), analysed.index.ravel()
        for k, table in enumerate(self.parameters.scale_tables):
            encode_values(encoder, table, flat_levels[flat_index == k])
        return _BLOCK.pack(analysed.level_code), encoder.get_compressed().astype("<u4").tobytes()

    def encode(self, latent: np.ndarray, quality: float) -> tuple[bytes, bytes]:
        """(model block, payload) of a latent at a quality in [0, 100]."""
        analysed = self.analyse(latent, quality)
        return self.write(analysed, analysed.gained_code)

    def decode(self, block: bytes, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """The latent (C, H, W) that a model block and payload stand for."""
        latent = self.run_graph("synthesis", self.synthesis_input(block, payload, shape)[None])[0]
        return latent[:, : shape[1], : shape[2]]

    def synthesis_input(self, block: bytes, payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """The dequantized code times the inverse gain, which the synthesis graph takes."""
        if len(block) != _BLOCK.size:
            raise SdliteError("corrupt .sdc file: the learned method's model block is not 2 bytes")
        (level_code,) = _BLOCK.unpack(block)
        if level_code > (self.parameters.levels - 1) * LEVEL_UNITS:
            raise SdliteError("corrupt .sdc file: the rate level is beyond the model's levels")
        if len(payload) % 4:
            raise SdliteError("corrupt .sdc file: the payload is not a whole number of 32-bit words")
        padded_height, padded_width = padded_grid(*shape[1:])
        hyper_shape = (len(self.parameters.hyper_tables), padded_height // GRID, padded_width // GRID)
        code_shape = (self.parameters.code_channels, padded_height // 2, padded_width // 2)
        try:
            decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
            z_levels = np.stack([decode_values(decoder, table, hyper_shape[1] * hyper_shape[2])
                                 for table in self.parameters.hyper_tables]).reshape(hyper_shape)
            mean, index = self.mean_and_scale_index(z_levels)
            flat_index = index.ravel()
            flat_levels = np.zeros(flat_index.size, np.int64)
            for k, table in enumerate(self.parameters.scale_tables):
                where = np.flatnonzero(flat_index == k)
                if where.size:
                    flat_levels[where] = decode_values(decoder, table, where.size)
            finished = decoder.maybe_exhausted()
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise SdliteError(f"corrupt .sdc file: the payload cannot be decoded ({exc})") from None
        if not finished:
            raise SdliteError("corrupt .sdc file: the payload holds more data than the latent shape in the header")
        y_hat = flat_levels.reshape(code_shape).astype(np.float32) + mean.astype(np.float32) / np.float32(MEAN_UNITS)
        return y_hat * self.parameters.gain(level_code / LEVEL_UNITS, inverse=True)[:, None, None]


class Learned(Method):
    id = 3
    name = "learned"
    description = "learned: trained transform and mean-scale hyperprior of the latent, exact integer probabilities"

    def __init__(self, model: ModelParts):
        super().__init__(model)
        entry = model.manifest.latent_codec
        if entry is None:
            raise SdliteError(f"model {model.manifest.name} has no trained latent codec for the learned method")
        self.code = LearnedCode(LatentCodecParameters.from_bytes(model.read_verified(entry)), model.run_graph)
        self.supports_effort = entry.code_vjp is not None

    @classmethod
    def available_for(cls, manifest: Manifest) -> bool:
        return manifest.latent_codec is not None

    def encode(self, latent: np.ndarray, quality: float) -> Coded:
        return Coded(1.0, *self.code.encode(latent, quality))  # the rate level is in the model block

    def decode(self, model_block: bytes, payload: bytes, shape: tuple[int, int, int], step: float) -> np.ndarray:
        return self.code.decode(model_block, payload, shape)

    def effort_search(self, latent: np.ndarray, quality: float) -> EffortSearch:
        """The search moves the code the synthesis takes (the gained code times the inverse gain) with z,
        and so every element's mean and scale, held where the encoder put them."""
        if not self.supports_effort:
            return super().effort_search(latent, quality)
        analysed = self.code.analyse(latent, quality)
        gain = self.code.parameters.gain(analysed.level_code / LEVEL_UNITS)[:, None, None]
        inverse_gain = self.code.parameters.gain(analysed.level_code / LEVEL_UNITS, inverse=True)[:, None, None]

        def quantize(candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            levels = np.clip(np.rint(candidate * gain - analysed.mean), -LARGEST_LEVEL, LARGEST_LEVEL)
            return (levels.astype(np.float32) + analysed.mean) * inverse_gain, levels.astype(np.int64)

        def encode(candidate: np.ndarray) -> Coded:
            return Coded(1.0, *self.code.write(analysed, candidate * gain))

        return EffortSearch(analysed.gained_code * inverse_gain, quantize, inverse_gain[:, 0, 0], "code_vjp", 2,
                            encode)
