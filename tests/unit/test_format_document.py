"""docs/FORMAT.md's uniform method (method 0) on latents made here, without a model: the documented
example is what sdlite writes, and the second decoder (written from the document alone) reads what the
real encoder writes at the alphabets' and the counts' limits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import sdlite
from sdlite.container import SdcFile
from sdlite.methods import quantizer
from sdlite.methods.uniform import AdaptiveCategorical

import second_decoder

FORMAT_MD = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"

# Any latent space: four channels at 1/8 of the picture's sides, the shape of the latents below.
MODEL = second_decoder.Model(second_decoder.latent_space_id("synthetic"), 4, 8)


def test_wide_alphabets_and_halved_counts_decode_alike():
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
    data = SdcFile(MODEL.latent_space_id, 512, 800, levels.shape, 0.25, 50, entropy_model.to_bytes(),
                   entropy_model.compress(levels)).to_bytes()
    decoded = second_decoder.decode(data, MODEL)
    assert np.array_equal(decoded.levels, levels)
    assert decoded.latent.tobytes() == quantizer.dequantize(levels, np.float32(0.25)).tobytes()


def test_counts_reaching_exactly_65536_are_not_halved():
    # 16 levels start at a count of 16 in all; 91 rows of 45 symbols add 16 x 4095: exactly 65536 after
    # the last of them, which is not above the threshold. The rows after it tell the two readings apart.
    rng = np.random.default_rng(6)
    levels = rng.integers(0, 16, (4, 94, 45)).astype(np.int32)
    levels[1:] = 0
    entropy_model = AdaptiveCategorical.fit(levels)
    data = SdcFile(MODEL.latent_space_id, 360, 752, levels.shape, 0.25, 50, entropy_model.to_bytes(),
                   entropy_model.compress(levels)).to_bytes()
    assert np.array_equal(second_decoder.decode(data, MODEL).levels, levels)


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
