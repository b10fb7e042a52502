"""A few thousand hostile .sdc files through the public decode path (bench/fuzz.py runs 100,000)."""

from __future__ import annotations

import sdlite
from bench.fuzz import FUZZ_MAX_PIXELS, Mutator, decode_one, fuzz, make_seeds, reseal

import numpy as np


def test_mutated_files_end_in_an_image_or_one_clear_error(tiny_model):
    codec = sdlite.Codec.load(tiny_model, max_pixels=FUZZ_MAX_PIXELS, threads=1)
    report = fuzz(codec, 3000, seed=5)
    assert report.total == 3000
    assert report.failures == [], report.text(0)
    # The mutations reach both ends and many different checks, not just the checksum.
    assert report.outcomes["image"] > 100 and report.outcomes["error"] > 1500
    assert len(report.errors) >= 12, report.text(0)


def test_the_seeds_decode_and_resealing_keeps_a_valid_file_valid(tiny_model):
    codec = sdlite.Codec.load(tiny_model, max_pixels=FUZZ_MAX_PIXELS)
    for seed in make_seeds(codec):
        assert reseal(seed) == seed
        assert decode_one(codec, seed, 10)[0] == "image"


def test_the_mutator_follows_the_container_fields(tiny_model):
    codec = sdlite.Codec.load(tiny_model, max_pixels=FUZZ_MAX_PIXELS)
    mutate = Mutator(make_seeds(codec), np.random.default_rng(0))
    names = {mutate.field_extreme()[0].split(" ")[0] for _ in range(400)}
    assert {"width", "height", "latent_shape", "step", "quality", "method", "payload", "model_params",
            "latent_space_id"} <= names
