"""docs/FORMAT.md is complete: a decoder written from it alone (second_decoder.py) agrees with sdlite's.

The second decoder must give the same integer levels and bit-identical float32 latent as the real one
on files from the real encoder, refuse what the real one refuses, and its range decoder must read what
constriction writes. The encoder side of section 4.3 is checked against constriction word for word.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import constriction
import numpy as np
import pytest

import sdlite
from sdlite.methods import METHODS
from sdlite.methods import quantizer
from sdlite.container import SdcFile
from sdlite.methods.uniform import AdaptiveCategorical

import second_decoder
from pictures import photo

FORMAT_MD = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
FAMILY = constriction.stream.model.Categorical(perfect=False)


@pytest.fixture(scope="module")
def codec(tiny_model):
    return sdlite.Codec.load(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model):
    return second_decoder.Model.from_manifest(json.loads((tiny_model / "manifest.json").read_text()))


def real_decode(codec, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The real decoder up to the latent: container, compatibility, entropy model, dequantization."""
    sdc = SdcFile.from_bytes(data)
    codec.check_compatible(sdc)
    levels = AdaptiveCategorical.from_bytes(sdc.model_params, sdc.latent_shape).decompress(
        sdc.payload, sdc.latent_shape)
    return levels, quantizer.dequantize(levels, sdc.step)


def outcome(decode, data: bytes):
    """What a decoder makes of the bytes: its levels and latent's bytes, or that it refused them."""
    try:
        levels, latent = decode(data)
    except (sdlite.SdliteError, second_decoder.FormatError):
        return "refused"
    return levels.tobytes(), latent.dtype, latent.tobytes()


def both_outcomes(codec, model, data: bytes):
    def second(data):
        decoded = second_decoder.decode(data, model)
        return decoded.levels, decoded.latent

    return outcome(lambda d: real_decode(codec, d), data), outcome(second, data)


@pytest.mark.parametrize("size, quality, seed", [
    ((97, 61), 100, 0), ((64, 48), 100, 1), ((8, 200), 95, 2), ((40, 24), 90, 3), ((33, 17), 75, 4),
    ((120, 80), 85, 5), ((97, 61), 50, 0), ((1, 1), 0, 0),
])
def test_second_decoder_gives_the_real_decoders_levels_and_latent(codec, model, size, quality, seed):
    data = codec.encode(photo(*size, seed=seed), quality=quality, method="uniform")
    assert quality < 75 or len(SdcFile.from_bytes(data).payload) > 0
    levels, latent = real_decode(codec, data)
    decoded = second_decoder.decode(data, model)
    assert (decoded.width, decoded.height) == size
    assert decoded.levels.dtype == np.int32 and np.array_equal(decoded.levels, levels)
    assert decoded.latent.dtype == np.float32 and decoded.latent.tobytes() == latent.tobytes()


def test_a_latent_of_single_level_channels_has_an_empty_payload(codec, model):
    data = codec.encode(photo(1, 1), quality=0, method="uniform")
    assert SdcFile.from_bytes(data).payload == b""
    assert both_outcomes(codec, model, data)[1] != "refused"


def test_wide_alphabets_and_halved_counts_decode_alike(model):
    # A latent the real encoder could make, with alphabets up to the largest (4095 levels) and rows
    # long enough for the counts to be halved several times.
    rng = np.random.default_rng(5)
    shape = (100, 64)
    levels = np.stack([
        rng.integers(-2047, 2048, shape),
        np.clip(np.rint(rng.normal(0, 3, shape)), -2047, 2047),
        rng.integers(0, 2, shape),
        np.full(shape, -7),
    ]).astype(np.int32)
    levels[0, 0, 0], levels[0, 0, 1] = -2047, 2047
    entropy_model = AdaptiveCategorical.fit(levels)
    data = SdcFile(model.latent_space_id, 512, 800, levels.shape, 0.25, 50, entropy_model.to_bytes(),
                   entropy_model.compress(levels)).to_bytes()
    decoded = second_decoder.decode(data, model)
    assert np.array_equal(decoded.levels, levels)
    assert decoded.latent.tobytes() == quantizer.dequantize(levels, np.float32(0.25)).tobytes()


def test_counts_reaching_exactly_65536_are_not_halved(model):
    # 16 levels start at a count of 16 in all; 91 rows of 45 symbols add 16 x 4095: exactly 65536 after
    # the last of them, which is not above the threshold. The rows after it tell the two readings apart.
    rng = np.random.default_rng(6)
    levels = rng.integers(0, 16, (4, 94, 45)).astype(np.int32)
    levels[1:] = 0
    entropy_model = AdaptiveCategorical.fit(levels)
    data = SdcFile(model.latent_space_id, 360, 752, levels.shape, 0.25, 50, entropy_model.to_bytes(),
                   entropy_model.compress(levels)).to_bytes()
    assert np.array_equal(second_decoder.decode(data, model).levels, levels)


def test_latent_space_id_is_derived_from_the_manifest_name(codec, model):
    assert SdcFile.from_bytes(codec.encode(photo(16, 16), method="uniform")).latent_space_id == model.latent_space_id


def test_crc32_is_the_zlib_crc(codec):
    data = codec.encode(photo(24, 16), method="uniform")
    assert second_decoder.crc32(data) == zlib.crc32(data)
    assert second_decoder.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value


def rebuild(header: bytes, model_block: bytes, payload: bytes) -> bytes:
    """A file with these parts and a correct CRC, whatever they hold."""
    body = header + struct.pack("<I", len(model_block)) + model_block + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    sdc = SdcFile.from_bytes(data)
    header = data[:offset] + value + data[offset + len(value) : 33]
    return rebuild(header, sdc.model_params, sdc.payload)


def model_block_with(data: bytes, lowest: int, size: int) -> bytes:
    """The file's model block with channel 0's level range replaced."""
    sdc = SdcFile.from_bytes(data)
    entropy_model = AdaptiveCategorical.from_bytes(sdc.model_params, sdc.latent_shape)
    entropy_model.lowest[0], entropy_model.sizes[0] = lowest, size
    return entropy_model.to_bytes()


def with_blocks(data: bytes, model_block: bytes | None = None, payload: bytes | None = None) -> bytes:
    sdc = SdcFile.from_bytes(data)
    return rebuild(data[:33], sdc.model_params if model_block is None else model_block,
                   sdc.payload if payload is None else payload)


FORGERIES = {
    "bad magic": lambda d: b"\x89SDD" + d[4:],
    "empty": lambda d: b"",
    "magic only": lambda d: d[:4],
    "cut in the header": lambda d: d[:30],
    "cut in the payload": lambda d: d[:-6],
    "no CRC": lambda d: d[:-4],
    "a byte after the CRC": lambda d: d + b"\x00",
    "bad CRC": lambda d: d[:-1] + bytes([d[-1] ^ 1]),
    "a header bit flipped": lambda d: d[:20] + bytes([d[20] ^ 4]) + d[21:],
    "a payload bit flipped": lambda d: d[:-6] + bytes([d[-6] ^ 1]) + d[-5:],
    "version 2": lambda d: patched(d, 4, b"\x02"),
    "method 4, not assigned": lambda d: patched(d, 5, b"\x04"),
    "method 255": lambda d: patched(d, 5, b"\xff"),
    "another latent space": lambda d: patched(d, 6, b"\x00" * 8),
    "zero width": lambda d: patched(d, 14, struct.pack("<I", 0)),
    "too many pixels": lambda d: patched(d, 14, struct.pack("<II", 1 << 15, (1 << 13) + 1)),
    "zero channels": lambda d: patched(d, 22, struct.pack("<H", 0)),
    "latent too tall": lambda d: patched(d, 24, struct.pack("<H", 9)),
    "zero step": lambda d: patched(d, 28, struct.pack("<f", 0.0)),
    "negative step": lambda d: patched(d, 28, struct.pack("<f", -0.25)),
    "NaN step": lambda d: patched(d, 28, struct.pack("<f", float("nan"))),
    "quality 101": lambda d: patched(d, 32, b"\x65"),
    "model block cut": lambda d: with_blocks(d, model_block=SdcFile.from_bytes(d).model_params[:-1]),
    "model block too long": lambda d: with_blocks(d, model_block=SdcFile.from_bytes(d).model_params + b"\x00"),
    "a 6-byte varint": lambda d: with_blocks(d, model_block=b"\x80" * 5 + b"\x00" + model_block_with(d, 0, 2)[1:]),
    "a level below -2047": lambda d: with_blocks(d, model_block=model_block_with(d, -2048, 2)),
    "a level above 2047": lambda d: with_blocks(d, model_block=model_block_with(d, 2047, 2)),
    "an empty level range": lambda d: with_blocks(d, model_block=model_block_with(d, 0, 0)),
    "payload not whole words": lambda d: with_blocks(d, payload=SdcFile.from_bytes(d).payload + b"\x00"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_both_decoders_refuse_the_same_broken_files(codec, model, forgery):
    data = codec.encode(photo(40, 24), quality=90, method="uniform")
    real, second = both_outcomes(codec, model, FORGERIES[forgery](data))
    assert real == second == "refused"


def test_an_unknown_method_is_named_in_the_refusal(codec, model):
    with pytest.raises(second_decoder.FormatError, match="unsupported coding method 7"):
        second_decoder.decode(patched(codec.encode(photo(16, 16), method="uniform"), 5, b"\x07"), model)


def test_both_decoders_agree_on_every_single_bit_flip_with_a_valid_crc(codec, model):
    data = codec.encode(photo(64, 48), quality=100, method="uniform")
    refused = 0
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            if position == 5 and flipped[5] in METHODS:
                continue  # another assigned method: the second decoder implements method 0 only
            if position < len(data) - 4:  # a valid CRC, so that the rules behind it are reached
                flipped[-4:] = struct.pack("<I", zlib.crc32(bytes(flipped[:-4])))
            real, second = both_outcomes(codec, model, bytes(flipped))
            assert real == second, (position, bit)
            refused += real == "refused"
    assert 0 < refused < 8 * len(data)  # some flips decode (payload, step), most are refused


def test_the_documented_example_is_what_sdlite_writes():
    text = FORMAT_MD.read_text(encoding="utf-8")
    example = re.search(r"<!-- example -->\n```\n(.*?)```", text, re.S).group(1)
    data = bytes.fromhex("".join(line.split("|")[0] for line in example.splitlines()))
    levels = np.array([[[0, 1, -1], [0, 0, 2]], [[3, 3, 3], [3, 3, 3]], [[-2, 0, 5], [1, 1, 0]]], dtype=np.int32)
    entropy_model = AdaptiveCategorical.fit(levels)
    written = SdcFile(sdlite.manifest.latent_space_id("example"), 20, 12, levels.shape,
                      0.25, 50, entropy_model.to_bytes(),  # the example's step, whatever the quality table
                      entropy_model.compress(levels)).to_bytes()
    assert data == written
    decoded = second_decoder.decode(data, second_decoder.Model(second_decoder.latent_space_id("example"), 3, 8))
    assert np.array_equal(decoded.levels, levels)
    assert np.array_equal(decoded.latent, levels * np.float32(0.25))


# The range coder and the fixed-point categorical, directly against constriction.

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


def test_an_sdc_file_shows_its_header_not_its_payload():
    sdc = SdcFile(b"\x01" * 8, 768, 512, (32, 64, 96), 0.5, 50, b"\x07" * 198, b"\xab" * 100_000, 2)
    text = repr(sdc)
    assert len(text) < 300 and "payload 100000 bytes" in text and "768x512" in text and "predictive" in text
    assert str(sdc) == text
