"""Integer frequency tables and the range coding of symbols with them, for the learned method.

A table codes the integers `lowest .. lowest + n - 2` as symbols 0 .. n-2 and anything else as the
**escape** symbol n-1, after which the value itself follows in a uniform alphabet of every level
(-LARGEST_LEVEL .. LARGEST_LEVEL). Frequencies are integers (at least 1 each, summing to TOTAL), given
to the range coder as binary64 numbers, so the fixed-point tables it derives (FORMAT.md 4.1) are the
same on every machine. The export computes the tables once from the trained densities; the runtime
never evaluates an erf or an exp to decide a probability.
"""

from __future__ import annotations

import math

import constriction
import numpy as np

from ..errors import SdliteError
from .quantizer import LARGEST_LEVEL

TOTAL = 1 << 16
# The hyper-prior's tables cover z = -HYPER_RANGE .. HYPER_RANGE; farther values escape.
HYPER_RANGE = 24
# y's scales: SCALE_COUNT points spaced evenly in log between the finest and the coarsest, as CompressAI's
# GaussianConditional does. Written from a formula here only for the export; the runtime reads the
# model's tables and thresholds, never these floats.
SCALE_COUNT = 64
SCALES = np.exp(np.linspace(math.log(0.11), math.log(64.0), SCALE_COUNT))
TAIL_SCALES = 8.0  # a scale's table reaches this many scales either side of the mean

ESCAPE_ALPHABET = 2 * LARGEST_LEVEL + 1
# every escaped value equally likely: a categorical of equal counts, so FORMAT.md 4.1 specifies it too
_UNIFORM = constriction.stream.model.Categorical(np.ones(ESCAPE_ALPHABET), perfect=False)


def tail(scale_index: int) -> int:
    """How far from the mean scale `scale_index`'s table reaches, in levels."""
    return math.ceil(TAIL_SCALES * float(SCALES[scale_index])) + 1


def frequencies_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Rows of probabilities (the last entry being the escape's) -> rows of integer frequencies that are
    each at least 1 and sum to TOTAL; the rounding remainder goes to the most probable symbol."""
    probabilities = np.asarray(probabilities, np.float64)
    n = probabilities.shape[1]
    normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
    frequencies = 1 + np.floor(normalised * (TOTAL - n)).astype(np.int64)
    rows = np.arange(len(frequencies))
    frequencies[rows, normalised.argmax(axis=1)] += TOTAL - frequencies.sum(axis=1)
    return frequencies


class FrequencyTable:
    """One table: `frequencies` (n >= 2 integers, the last the escape's) for values from `lowest`."""

    def __init__(self, frequencies: np.ndarray, lowest: int):
        self.frequencies = np.asarray(frequencies, np.int64)
        self.lowest = lowest
        self.model = constriction.stream.model.Categorical(self.frequencies.astype(np.float64), perfect=False)

    @property
    def escape(self) -> int:
        return len(self.frequencies) - 1

    def symbols(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the symbol of each value, the escaped values' places)."""
        symbols = values.astype(np.int64) - self.lowest
        escaped = (symbols < 0) | (symbols >= self.escape)
        symbols[escaped] = self.escape
        return symbols.astype(np.int32), escaped


def encode_values(encoder, table: FrequencyTable, values: np.ndarray) -> None:
    """Codes `values` (levels within +-LARGEST_LEVEL) with `table`, then every escaped value uniformly."""
    symbols, escaped = table.symbols(values)
    encoder.encode(symbols, table.model)
    if escaped.any():
        encoder.encode((values[escaped] + LARGEST_LEVEL).astype(np.int32), _UNIFORM)


def decode_values(decoder, table: FrequencyTable, count: int) -> np.ndarray:
    symbols = decoder.decode(table.model, count).astype(np.int64)
    values = symbols + table.lowest
    escaped = symbols == table.escape
    if escaped.any():
        values[escaped] = decoder.decode(_UNIFORM, int(escaped.sum())).astype(np.int64) - LARGEST_LEVEL
    return values


def check_frequencies(frequencies: np.ndarray, what: str) -> None:
    if frequencies.ndim != 1 or len(frequencies) < 2 or frequencies.min() < 1 or frequencies.sum() != TOTAL:
        raise SdliteError(f"the latent codec's {what} is not a valid frequency table")
