"""The second decoder's range decoder and fixed-point categorical (docs/FORMAT.md 4.1-4.3) against
constriction, which sdlite codes with: it reads what constriction writes, refuses what constriction
refuses, and the document's range encoder writes constriction's words, carries included."""

from __future__ import annotations

import constriction
import numpy as np
import pytest

import second_decoder

FAMILY = constriction.stream.model.Categorical(perfect=False)


def decode_symbols(words: np.ndarray, probabilities: np.ndarray) -> list[int]:
    decoder = second_decoder.RangeDecoder([int(w) for w in words])
    tables = {}  # rows repeat: build each one's cumulative once
    symbols = []
    for row in probabilities:
        key = row.tobytes()
        if key not in tables:
            tables[key] = second_decoder.lazy_categorical_cumulative([float(p) for p in row])
        symbols.append(decoder.decode(tables[key]))
    return symbols


def constriction_words(symbols: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    encoder = constriction.stream.queue.RangeEncoder()
    if len(symbols):
        encoder.encode(np.asarray(symbols, dtype=np.int32), FAMILY, np.asarray(probabilities, dtype=np.float64))
    return encoder.get_compressed()


def random_tables(rng, count: int, size: int, kind: str) -> np.ndarray:
    if kind == "counts":
        counts = rng.integers(1, 200, (count, size))
    elif kind == "heavy tail":
        counts = (rng.exponential(1.0, (count, size)) ** 6 * 1000).astype(np.int64) + 1
    else:  # unnormalised floats, some of them zero
        counts = rng.uniform(0, 3, (count, size)) * (rng.uniform(size=(count, size)) > 0.2)
        counts[:, 0] += 0.5
    return counts / counts.sum(axis=1, keepdims=True) if kind != "floats" else counts


@pytest.mark.parametrize("size", [2, 3, 17, 300, 4095])
@pytest.mark.parametrize("kind", ["counts", "heavy tail", "floats"])
def test_range_decoder_reads_what_constriction_writes(size, kind):
    rng = np.random.default_rng(size)
    probabilities = random_tables(rng, 150, size, kind)
    normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
    symbols = np.array([rng.choice(size, p=row) for row in normalised])
    symbols[::7] = size - 1
    symbols[3::11] = 0
    assert decode_symbols(constriction_words(symbols, probabilities), probabilities) == list(symbols)


@pytest.mark.parametrize("symbols, probabilities", [
    ([], np.zeros((0, 2))),
    ([1], [[0.5, 0.5]]),
    ([0], [[1.0, 0.0]]),
    ([1], [[1.0, 0.0]]),  # a symbol of probability zero still gets the smallest fixed-point probability
    ([0] * 40, [[1e-12, 1.0]] * 40),  # the rarest symbol, over and over: many renormalisations
    ([1] * 40, [[1e-12, 1.0]] * 40),
    ([4094, 0, 4094], [[1.0] * 4094 + [1e9]] * 3),
    ([2000] * 5, [[1e-300] * 4095] * 5),
])
def test_range_decoder_edge_cases(symbols, probabilities):
    probabilities = np.array(probabilities, dtype=np.float64)
    words = constriction_words(np.array(symbols), probabilities)
    if not symbols:
        assert len(words) == 0
    assert decode_symbols(words, probabilities) == list(symbols)


def test_random_words_decode_alike_or_are_refused_by_both():
    rng = np.random.default_rng(7)
    refused = 0
    for trial in range(300):
        size = int(rng.choice([2, 3, 40]))
        probabilities = random_tables(rng, int(rng.integers(1, 20)), size, "counts")
        words = rng.integers(0, 1 << 32, int(rng.integers(0, 4)), dtype=np.uint64).astype(np.uint32)
        if trial % 3 == 0 and len(words):
            words[0] = 0xFFFFFFFF  # a point near the top of the range: quantiles of 2^24 and more
        try:
            expected = list(constriction.stream.queue.RangeDecoder(words).decode(FAMILY, probabilities))
        except AssertionError:
            expected = "refused"
        try:
            got = decode_symbols(words, probabilities)
        except second_decoder.FormatError:
            got = "refused"
        assert got == expected, trial
        refused += got == "refused"
    assert refused > 0


class DocumentedEncoder:
    """Section 4.3's range encoder, written from the document, to check it against constriction."""

    MASK = (1 << 64) - 1

    def __init__(self):
        self.lower, self.range, self.words = 0, self.MASK, []
        self.held_word, self.held_count = None, 0
        self.releases = []  # (carry, held words) each time held words are written: which cases ran

    def _release(self, carry: bool) -> None:
        follower = 0 if carry else 0xFFFFFFFF
        self.words += [self.held_word + carry] + [follower] * (self.held_count - 1)
        self.releases.append((carry, self.held_count))
        self.held_word, self.held_count = None, 0

    def encode(self, symbol: int, cumulative: list[int]) -> None:
        scale = self.range >> 24
        self.range = scale * (cumulative[symbol + 1] - cumulative[symbol])
        lower = self.lower + scale * cumulative[symbol]
        self.lower = lower & self.MASK
        if self.held_count and self.lower + self.range <= self.MASK:
            self._release(carry=lower > self.MASK)
        if self.range < 1 << 32:
            word = self.lower >> 32
            self.lower, self.range = (self.lower << 32) & self.MASK, self.range << 32
            if self.held_count:
                self.held_count += 1
            elif self.lower + self.range <= self.MASK:
                self.words.append(word)
            else:
                self.held_word, self.held_count = word, 1

    def seal(self) -> list[int]:
        if self.range == self.MASK:
            return self.words
        point = self.lower + (1 << 32) - 1
        if self.held_count:
            self._release(carry=point > self.MASK)
        point &= self.MASK
        self.words.append(point >> 32)
        if ((self.lower + self.range) & self.MASK) >> 32 == point >> 32:
            self.words.append(0)
        return self.words


def test_the_documented_encoder_writes_constrictions_words_carries_included():
    # Symbols are picked to keep the range straddling a carry boundary for a while, then to fall on
    # either side of it, so that held words are released with and without a carry.
    rng = np.random.default_rng(11)
    probabilities = np.full((800, 4095), 1 / 4095)
    probabilities[:, 0] = 0.3
    cumulative = second_decoder.lazy_categorical_cumulative([float(p) for p in probabilities[0]])
    encoder, symbols = DocumentedEncoder(), []
    for _ in range(len(probabilities)):
        if encoder.held_count and rng.uniform() < 0.9:
            boundary = ((1 << 64) - encoder.lower) // (encoder.range >> 24)
            symbol = min(np.searchsorted(cumulative, boundary, side="right") - 1, 4094)
        else:
            symbol = int(rng.integers(0, 4095))
        symbols.append(int(symbol))
        encoder.encode(symbol, cumulative)
    words = encoder.seal()
    assert words == [int(w) for w in constriction_words(np.array(symbols), probabilities)]
    assert decode_symbols(np.array(words, dtype=np.uint32), probabilities) == symbols
    releases = set(encoder.releases)
    assert any(carry and held > 1 for carry, held in releases)
    assert any(not carry and held > 1 for carry, held in releases)
