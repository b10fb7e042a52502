"""Tiles that see the whole picture's group-norm statistics and attention: segments run in step."""

from __future__ import annotations

import numpy as np
import pytest

import sdlite
from sdlite import images
from sdlite.networks import lockstep, runner
from sdlite.networks.runner import PICTURE_BYTES_PER_PIXEL
from sdlite.networks.tiling import DEFAULT_OVERLAP, MemoryModel, Tiling, cut, lockstep_peak, run_tiled

from pictures import photo


def psnr_of(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_the_export_cuts_graphs_with_group_norms_into_segments_that_match_them(tiny_model):
    manifest = sdlite.Manifest.from_json((tiny_model / "manifest.json").read_text())
    assert {v.precision for v in manifest.variants} == {"int8", "fp16"}
    for graph in (manifest.encoder, manifest.decoder, *(g for v in manifest.variants for g in (v.encoder, v.decoder))):
        segments = graph.segments.segments
        assert any(s.attended for s in segments) and sum(bool(s.normalised) for s in segments) > 5
        record = manifest.verification["segments"][graph.file]  # run in one piece
        assert record["bound"] <= 1e-3 * 10
        if graph in (manifest.encoder, manifest.decoder):
            assert record["max_abs_diff"] <= record["bound"]
        else:  # rounded graphs: as close to float32 as the whole variant, within 3 dB or the bound
            error = record["float32_mse"]
            assert 0 < error["segments"] <= max(2 * error["whole"], record["bound"] ** 2)
        assert graph.segments.held_bytes_per_cell > 0
    # what a tile holds between segments is activations (and a few scalars): an int8 graph's weights stay
    # in their segments
    for variant in manifest.variants:
        for graph, float32 in ((variant.encoder, manifest.encoder), (variant.decoder, manifest.decoder)):
            assert graph.segments.held_bytes_per_cell <= 1.01 * float32.segments.held_bytes_per_cell


@pytest.fixture(scope="module")
def codecs(tiny_model):
    return (sdlite.Codec.load(tiny_model, precision="fp32", max_memory=1 << 50),
            sdlite.Codec.load(tiny_model, precision="fp32", tile=16))


def test_a_tiled_decode_and_encode_agree_with_the_whole_ones(codecs):
    whole, tiled = codecs
    pixels = images.to_array(photo(256, 256), 8)  # a latent of 32 x 32 cells: 3 x 3 tiles of 16
    latent = whole.networks.run_encoder(pixels)
    reference = whole.networks.run_decoder(latent)
    tiling = tiled.networks.tiling("decoder", 32, 32)
    assert tiling is not None and tiling.in_step
    # Each tile alone, normalised with its own statistics, gets 19 dB (decoder) and 14 dB (encoder).
    assert psnr_of(run_tiled(tiled.networks.decoder, latent, tiling, 1, 8), reference) < 22
    assert psnr_of(tiled.networks.run_decoder(latent), reference) > 26
    assert psnr_of(whole.networks.run_decoder(tiled.networks.run_encoder(pixels)), reference) > 20


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_tiles_of_a_lower_precision_run_in_step_too(tiny_model, precision):
    whole = sdlite.Codec.load(tiny_model, precision=precision, max_memory=1 << 50)
    tiled = sdlite.Codec.load(tiny_model, precision=precision, tile=16)
    latent = whole.networks.run_encoder(images.to_array(photo(256, 256), 8))
    reference = whole.networks.run_decoder(latent)
    tiling = tiled.networks.tiling("decoder", 32, 32)
    assert tiling.in_step
    # measured: 19 dB alone, 27-28 dB in step (float32's figures: int8's own rounding costs nothing here)
    assert psnr_of(run_tiled(tiled.networks.decoder, latent, tiling, 1, 8), reference) < 22
    assert psnr_of(tiled.networks.run_decoder(latent), reference) > 26


def test_what_tiles_in_step_hold_goes_to_files_where_it_does_not_fit_in_memory(tiny_model, codecs, monkeypatch):
    whole, tiled = codecs
    assert tiled.networks.tiling("decoder", 32, 32) == Tiling(16, 4, in_step=True)
    memory, held = MemoryModel(*whole.manifest.decoder.memory), whole.manifest.decoder.segments.held_bytes_per_cell
    tiles = cut(32, 32, Tiling(16, 4))  # 3 x 3
    spilled = lockstep_peak(tiles, memory, held, spilled=True) + PICTURE_BYTES_PER_PIXEL * 256 * 256
    assert spilled < lockstep_peak(tiles, memory, held)
    small = sdlite.Codec.load(tiny_model, precision="fp32", tile=16, max_memory=int(spilled) + 1, spill=True)
    assert small.networks.tiling("decoder", 32, 32) == Tiling(16, 4, in_step=True, spilled=True)
    latent = whole.networks.run_encoder(images.to_array(photo(256, 256), 8))
    written = []
    real_put = lockstep.Spilled.put
    monkeypatch.setattr(lockstep.Spilled, "put", lambda self, key, tensors: (written.append(key),
                                                                            real_put(self, key, tensors)))
    # the same arithmetic as in memory, the tensors only stored between segments
    assert np.array_equal(small.networks.run_decoder(latent), tiled.networks.run_decoder(latent))
    assert written and not any(lockstep.spill_folder().iterdir())  # the files went when the decode ended
    # unless asked to (they are slower), or with no disk to take them, the tiles run alone
    assert small.copy(spill=False).networks.tiling("decoder", 32, 32) == Tiling(16, 4)
    monkeypatch.setattr(runner, "spill_bytes", lambda: 0.0)
    assert small.networks.tiling("decoder", 32, 32) == Tiling(16, 4)
    assert small.decode(small.encode(photo(256, 256))).size == (256, 256)


def test_a_picture_too_large_to_run_whole_is_cut_into_tiles_that_run_in_step(tiny_model, codecs):
    whole, _ = codecs
    memory = MemoryModel(*whole.manifest.decoder.memory)
    in_step = lockstep_peak(cut(64, 64, Tiling(32, DEFAULT_OVERLAP)), memory,
                            whole.manifest.decoder.segments.held_bytes_per_cell)
    assert in_step < memory.peak(64 * 64)  # the whole run does not fit
    codec = sdlite.Codec.load(tiny_model, precision="fp32",
                              max_memory=int(in_step + PICTURE_BYTES_PER_PIXEL * 512 * 512))
    tiling = codec.networks.tiling("decoder", 64, 64)
    # the largest tiles alone would fit too, but then normalise with their own statistics
    assert tiling is not None and tiling.tile >= 32 and tiling.in_step
    latent = whole.networks.run_encoder(images.to_array(photo(512, 512), 8))
    reference = whole.networks.run_decoder(latent)
    assert psnr_of(codec.networks.run_decoder(latent), reference) > 26
    # only the segments' sessions were made, and none keeps an arena (some thirty would each keep their largest run)
    assert "decoder" not in codec.networks._graphs
    assert not any(graph.session.get_session_options().enable_cpu_mem_arena for graph in codec.networks._segments["decoder"])


