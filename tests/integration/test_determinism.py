"""The same picture gives the same bytes in every run and at every thread count; a file gives the same
latent everywhere; one Codec shared by threads gives what it gives serially."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime
import pytest

import sdlite
from sdlite import images
from sdlite.methods import quantizer
from sdlite.container import SdcFile
from sdlite.methods.uniform import AdaptiveCategorical

from conftest import run
from pictures import photo

PICTURES = [photo(97, 61, 0), photo(64, 64, 1), photo(7, 3, 2), photo(200, 40, 3)]
THREADS = (1, 2, 4)


@pytest.fixture(scope="module")
def codecs(tiny_model):
    return {threads: sdlite.Codec.load(tiny_model, threads=threads) for threads in THREADS}


def test_the_encoder_latent_is_bitwise_the_same_at_every_thread_count(codecs, sd1_model):
    # What makes files independent of the thread count: onnxruntime's CPU kernels split the work
    # between threads without changing the order of any sum. Checked for the full SD 1.x architecture too.
    big = {threads: sdlite.Codec.load(sd1_model, threads=threads) for threads in (1, 2)}
    for group, sizes in ((codecs, [p.size for p in PICTURES]), (big, [(96, 64)])):
        for size in sizes:
            pixels = images.to_array(photo(*size), 8)
            latents = [codec.networks.encoder(pixels) for codec in group.values()]
            assert all(np.array_equal(latents[0], other) for other in latents[1:]), size


def test_files_are_byte_identical_across_thread_counts(codecs):
    for quality in (0, 50, 100):
        for picture in PICTURES:
            files = {codec.encode(picture, quality=quality) for codec in codecs.values()}
            assert len(files) == 1, (picture.size, quality)


def test_files_are_byte_identical_across_runs(tmp_path, tiny_model):
    photo(97, 61).save(tmp_path / "p.png")
    for number in (1, 2):
        result = run(sys.executable, "-m", "sdlite.cli", "encode", str(tmp_path / "p.png"), "-o",
                     str(tmp_path / f"{number}.sdc"), "--model", str(tiny_model), "-q", "70")
        assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "1.sdc").read_bytes() == (tmp_path / "2.sdc").read_bytes()
    assert (tmp_path / "1.sdc").read_bytes() == sdlite.Codec.load(tiny_model).encode(tmp_path / "p.png", quality=70)


def test_a_file_decodes_to_the_same_latent_on_every_provider_and_thread_count(codecs, tiny_model):
    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else [])
    readers = list(codecs.values()) + [sdlite.Codec.load(tiny_model, device) for device in devices]
    for picture in PICTURES:
        data = codecs[1].encode(picture, quality=60)
        latents = [reader.decode_latent(data) for reader in readers]
        assert all(latent.dtype == np.float32 and latent.tobytes() == latents[0].tobytes() for latent in latents)
    # The latent is made from integers and one float32 multiply, without any onnxruntime session.
    fresh = sdlite.Codec.load(tiny_model)
    fresh.decode_latent(data)
    assert fresh.networks._graphs == {}


def test_the_decoded_latent_is_exactly_the_stored_levels_times_the_step(codec_plain):
    rng = np.random.default_rng(0)
    levels = rng.integers(-40, 41, (4, 3, 5)).astype(np.int32)
    levels[2] = 7  # a single-level channel, coded by its range alone
    step = quantizer.step_for_quality(37)
    model = AdaptiveCategorical.fit(levels)
    data = SdcFile(codec_plain.manifest.latent_space_id, 40, 24, levels.shape, float(step), 37, model.to_bytes(),
                   model.compress(levels)).to_bytes()
    expected = levels.astype(np.float32) * np.float32(step)
    assert codec_plain.decode_latent(data).tobytes() == expected.tobytes()


@pytest.fixture(scope="module")
def codec_plain(tiny_model):
    return sdlite.Codec.load(tiny_model)


def test_one_codec_shared_by_threads_gives_the_serial_results(tiny_model):
    serial_codec = sdlite.Codec.load(tiny_model)
    jobs = [(picture, quality) for picture in PICTURES for quality in (10, 60, 95)]
    serial_files = [serial_codec.encode(picture, quality=quality) for picture, quality in jobs]
    serial_images = [np.asarray(serial_codec.decode(data)) for data in serial_files]

    shared = sdlite.Codec.load(tiny_model)  # fresh: the threads also race to load the graphs
    with ThreadPoolExecutor(max_workers=8) as pool:
        files = list(pool.map(lambda job: shared.encode(job[0], quality=job[1]), jobs * 2))
        decoded = list(pool.map(lambda data: np.asarray(shared.decode(data)), files))
    assert files == serial_files * 2
    assert all(np.array_equal(a, b) for a, b in zip(decoded, serial_images * 2))
    assert len(shared.networks._graphs) == 2
