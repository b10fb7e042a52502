"""Hostile .sdc files: a few thousand fuzzed ones through the public decode path (bench/fuzz.py runs
100,000), and forged headers that must be refused before any work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import sdlite
from bench.fuzz import FUZZ_MAX_PIXELS, Mutator, decode_one, fuzz, make_seeds, reseal
from sdlite import SdcFile


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


def forged(codec, **changes) -> bytes:
    """A valid file of a 64 x 48 picture (every latent channel coded) with some fields changed."""
    from pictures import photo

    return dataclasses.replace(SdcFile.from_bytes(codec.encode(photo(64, 48), quality=90)), **changes).to_bytes()


def test_a_header_that_claims_a_huge_picture_is_refused_before_anything_is_allocated(tiny_model):
    import tracemalloc

    codec = sdlite.Codec.load(tiny_model)
    claims = [dict(width=60000, height=60000, latent_shape=(4, 7500, 7500)),  # above the pixel limit
              dict(width=64, height=48, latent_shape=(4, 6, 65535))]  # sizes that do not add up
    for claim in claims:
        data = forged(codec, **claim)
        tracemalloc.start()
        try:
            with pytest.raises(sdlite.SdliteError):
                codec.decode(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, (claim, peak)  # the claimed latent alone would be 900 MB


def test_a_payload_longer_than_the_latent_needs_is_refused(tiny_model):
    from pictures import photo

    codec = sdlite.Codec.load(tiny_model)
    for picture, quality in ((photo(40, 24), 50), (photo(64, 48), 90)):  # no coded channel, then four
        sdc = SdcFile.from_bytes(codec.encode(picture, quality=quality))
        longer = dataclasses.replace(sdc, payload=sdc.payload + bytes(range(1, 17))).to_bytes()
        with pytest.raises(sdlite.SdliteError, match="more data than the latent shape"):
            codec.decode(longer)


def test_a_step_that_overflows_the_latent_is_refused_without_a_numpy_warning(tiny_model):
    import warnings

    codec = sdlite.Codec.load(tiny_model)
    for step in (3e38, float("inf"), float("nan"), 0.0, -1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(sdlite.SdliteError, match="step|quantizer"):
                codec.decode(forged(codec, step=step))


def test_memory_onnxruntime_cannot_get_is_one_clear_line(tiny_model, monkeypatch):
    codec = sdlite.Codec.load(tiny_model, precision="fp32")
    data = forged(codec)

    class FailingSession:
        def run(self, *args):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : bfc_arena.cc:360 Failed to allocate memory for "
                               "requested buffer of size 274877906944")

    monkeypatch.setattr(codec.networks.decoder, "session", FailingSession())
    with pytest.raises(sdlite.SdliteError, match="not enough memory to run .*decoder.onnx on a 1x4x6x8 input"):
        codec.decode(data)


def test_the_user_gets_one_line_per_hostile_file(tiny_model, tmp_path):
    import sys

    from conftest import run

    codec = sdlite.Codec.load(tiny_model, max_pixels=FUZZ_MAX_PIXELS)
    mutate = Mutator(make_seeds(codec), np.random.default_rng(7))
    refused = []
    while len(refused) < 25:
        _, data = mutate()
        if decode_one(codec, data, 10)[0] == "error":
            refused.append(tmp_path / f"hostile-{len(refused):02d}.sdc")
            refused[-1].write_bytes(data)
    sdlite_cli = [sys.executable, "-m", "sdlite.cli"]
    decode = run(*sdlite_cli, "decode", *map(str, refused), "-o", f"{tmp_path / 'out'}/", "--model", str(tiny_model),
                 "--max-pixels", str(FUZZ_MAX_PIXELS))
    info = run(*sdlite_cli, "info", *map(str, refused))
    for result in (decode, info):
        stderr = result.stderr.decode()
        assert result.returncode == 1 and "Traceback" not in stderr and "internal error" not in stderr, stderr

    def error_lines(result, path):
        return [line for line in result.stderr.decode().splitlines() if line.startswith(f"sdlite: error: {path}: ")]

    assert all(len(error_lines(decode, path)) == 1 for path in refused)  # every one refused, in one line
    assert all(len(error_lines(info, path)) <= 1 for path in refused)  # some have a readable header
    assert not list((tmp_path / "out").glob("*.png"))


def test_hostile_model_folders_end_in_a_picture_or_one_clear_error(tiny_model):
    from bench.fuzz_models import fuzz_folders

    report, failures = fuzz_folders(tiny_model, 40, seed=1)
    assert failures == 0, report
    assert "read outside" not in report


def test_the_folder_fuzzer_sees_a_read_outside_the_folder(tiny_model, monkeypatch):
    # Without the scan and the empty external-data folder, onnxruntime reads ./secret.bin as it once did:
    # the fuzzer must say so.
    from bench import fuzz_models
    from sdlite.networks import inference

    monkeypatch.setattr(inference, "check_self_contained", lambda graph, label: None)
    monkeypatch.setattr(inference, "nowhere", lambda: "")
    monkeypatch.setattr(fuzz_models, "LOCATIONS", ["secret.bin"])
    monkeypatch.setattr(fuzz_models, "OFFSETS", [("0", "64")])
    monkeypatch.setattr(fuzz_models.FolderMutator, "__init__", _only_external_data(fuzz_models.FolderMutator.__init__))
    report, failures = fuzz_models.fuzz_folders(tiny_model, 4, seed=0)
    assert "read outside the folder" in report and failures > 0, report


def _only_external_data(init):
    def patched(self, *args):
        init(self, *args)
        self.mutations = [self.external_data]
    return patched
