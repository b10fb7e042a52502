"""The compiled entropy decoders (rangedecode.py) against constriction, which writes the files, and the
bound on the work one file can cause before the networks run."""

from __future__ import annotations

import struct

import constriction
import numpy as np
import pytest

import sdlite
from sdlite import rangedecode
from sdlite.container import SdcFile
from sdlite.methods.predictive import Predictive
from sdlite.methods.uniform import Uniform
from sdlite.methods.uniform import AdaptiveCategorical, _varint, _zigzag
from sdlite.methods.predictive import PredictiveModel

FAMILY = constriction.stream.model.Categorical(perfect=False)


def constriction_adaptive(payload: bytes, shape, sizes) -> np.ndarray | str:
    """Method 0 decoded by constriction's lazy categorical, as sdlite did before: the reference."""
    words = np.frombuffer(payload, "<u4").astype(np.uint32)
    symbols = np.zeros(shape, np.int32)
    counts = [np.ones(int(size), np.int64) for size in sizes]
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
        for y in range(shape[1]):
            for c in (c for c, size in enumerate(sizes) if size > 1):
                table = np.tile(counts[c] / counts[c].sum(), (shape[2], 1))
                symbols[c, y] = decoder.decode(FAMILY, table)
                counts[c] += 16 * np.bincount(symbols[c, y], minlength=counts[c].size)
                if counts[c].sum() > 65536:
                    counts[c] = (counts[c] + 1) // 2
    except AssertionError:
        return "undecodable"
    return symbols if decoder.maybe_exhausted() else "not exhausted"


def compiled_adaptive(payload: bytes, shape, sizes) -> np.ndarray | str:
    try:
        return rangedecode.decode_adaptive(payload, shape, np.array(sizes))
    except sdlite.SdliteError as exc:
        return "undecodable" if "cannot be decoded" in str(exc) else "not exhausted"


def same(a, b) -> bool:
    return a == b if isinstance(a, str) or isinstance(b, str) else np.array_equal(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_method_0_decodes_what_constriction_writes(seed):
    rng = np.random.default_rng(seed)
    shape = (3, 90, int(rng.integers(1, 30)))
    levels = np.clip(np.rint(rng.laplace(0, [1, 30, 600][seed % 3], shape)), -2047, 2047).astype(np.int32)
    levels[1, :, :] = 4  # a channel of one level is not coded
    model = AdaptiveCategorical.fit(levels)
    assert np.array_equal(model.decompress(model.compress(levels), shape), levels)


@pytest.mark.parametrize("seed", range(4))
def test_method_2_decodes_what_constriction_writes(seed):
    rng = np.random.default_rng(seed)
    shape = (4, 70, int(rng.integers(1, 40)))
    levels = np.clip(np.rint(rng.laplace(0, [0.5, 3, 80, 400][seed], shape)), -255, 255).astype(np.int32)
    channels = shape[0]
    model = PredictiveModel(np.zeros(channels), np.zeros(channels), np.zeros((channels, 3)), np.zeros(channels),
                            int(np.abs(levels).max()))
    assert np.array_equal(model.decompress(model.compress(levels), shape), levels)


def test_random_and_damaged_payloads_end_as_constriction_says():
    rng = np.random.default_rng(3)
    outcomes = set()
    for trial in range(200):
        shape = (2, int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        sizes = [int(rng.choice([2, 3, 40, 4095])), int(rng.choice([1, 2, 17]))]
        if trial % 2:
            words = rng.integers(0, 1 << 32, int(rng.integers(0, 6)), dtype=np.uint64).astype(np.uint32)
            if trial % 3 == 0:
                words[:2] = 0xFFFFFFFF  # a point at the top of the range: quantiles of 2^24 and more
            payload = words.astype("<u4").tobytes()
        else:  # a real payload, cut short or lengthened
            levels = np.stack([rng.integers(0, size, shape[1:]) for size in sizes]).astype(np.int32)
            payload = AdaptiveCategorical(np.zeros(2), np.array(sizes)).compress(levels)
            cut = 4 * int(rng.integers(0, 3))
            payload = payload[:len(payload) - cut] if trial % 4 else payload + b"\x00\x00\x00\x01"
        expected = constriction_adaptive(payload, shape, sizes)
        got = compiled_adaptive(payload, shape, sizes)
        assert same(got, expected), trial
        outcomes.add(expected if isinstance(expected, str) else "decoded")
    assert outcomes == {"undecodable", "not exhausted", "decoded"}


def test_a_payload_short_by_two_words_is_reported_as_cut_short():
    rng = np.random.default_rng(0)
    levels = rng.integers(-20, 20, (4, 16, 16)).astype(np.int32)
    model = AdaptiveCategorical.fit(levels)
    payload = model.compress(levels)
    with pytest.raises(sdlite.SdliteError, match="payload is cut short"):
        model.decompress(payload[:-8], levels.shape)
    with pytest.raises(sdlite.SdliteError, match="holds more data than the latent shape"):
        model.decompress(payload + b"\x00" * 8, levels.shape)


def test_a_latent_too_narrow_for_its_alphabets_is_refused_before_any_work():
    # 262144 rows of one cell and 32 channels of 4095 levels: 34 billion table entries if decoded.
    shape = (32, 262144, 1)
    model = AdaptiveCategorical(np.full(32, -2047), np.full(32, 4095))
    assert rangedecode.adaptive_table_entries(shape, model.sizes) > rangedecode.MAX_TABLE_ENTRIES
    with pytest.raises(sdlite.SdliteError, match="probability-table entries, above the limit"):
        model.decompress(b"", shape)
    predictive = PredictiveModel(np.zeros(32), np.zeros(32), np.zeros((32, 3)), np.zeros(32), 255)
    with pytest.raises(sdlite.SdliteError, match="above the limit"):
        predictive.decompress(b"", shape)
    with pytest.raises(sdlite.SdliteError, match="too narrow for its range of levels"):
        model.compress(np.zeros(shape, np.int32))


def test_the_largest_real_pictures_stay_within_the_bound():
    # 4096x4096 through a 32-channel latent at 1/8: every alphabet at its largest.
    shape = (32, 512, 512)
    assert rangedecode.adaptive_table_entries(shape, np.full(32, 4095)) <= rangedecode.MAX_TABLE_ENTRIES
    assert rangedecode.predictive_table_entries(shape, 255) <= rangedecode.MAX_TABLE_ENTRIES


def hostile_method_0(shape) -> bytes:
    """The issue's 173-byte kind of file: every channel claims 4095 levels, the payload almost nothing."""
    params = b"".join(_varint(_zigzag(-2047)) + _varint(4095) for _ in range(shape[0]))
    return params


def test_small_hostile_files_decode_their_latent_within_the_bound(tiny_model):
    """A file of a few hundred bytes claiming the largest picture, with all-zero parameters (method 2)
    or the widest alphabets (method 0): decoded up to the latent, without the network."""
    codec = sdlite.Codec.load(tiny_model)
    manifest = codec.manifest
    side = 4096
    latent_side = -(-side // manifest.downsampling_factor)
    shape = (manifest.latent_channels, latent_side, latent_side)
    zero_predictive = struct.pack("<H", 0) + bytes(6 * shape[0])
    wide = hostile_method_0(shape)
    for method, params, payload in ((Predictive.id, zero_predictive, b""),
                                    (Uniform.id, wide, b"\x00" * 96)):
        data = SdcFile(manifest.latent_space_id, side, side, shape, 1.0, 50, params, payload, method).to_bytes()
        assert len(data) < 400
        try:
            latent = codec.decode_latent(data)
        except sdlite.SdliteError as exc:  # a payload that ends wrong: refused, after decoding every symbol
            assert "payload" in str(exc)
        else:
            assert latent.shape == shape
