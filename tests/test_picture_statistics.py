"""Tiles that see the whole picture's group-norm statistics and attention: segments run in step."""

from __future__ import annotations

import numpy as np
import pytest

import sdlite
from sdlite import images
from sdlite.codec import PICTURE_BYTES_PER_PIXEL
from sdlite.lockstep import attention, owned_cells, picture_moments
from sdlite.tiling import DEFAULT_OVERLAP, MemoryModel, Tiling, cut, lockstep_peak, run_tiled

from pictures import photo


def psnr_of(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_moments_and_attention_over_owned_cells_are_the_whole_picture_s():
    rng = np.random.default_rng(0)
    height, width, tile, factor = 21, 30, 12, 2  # three tiles a side, activations at twice the grid
    activation = rng.normal(1.0, 2.0, (1, 8, height * factor, width * factor)).astype(np.float32)
    queries, keys, values = (rng.normal(size=shape).astype(np.float32) for shape in
                             ((1, 1, height * width, 4), (1, 1, 4, height * width), (1, 1, height * width, 4)))
    parts = [(t.rows.start, t.columns.start, t.owned) for t in cut(height, width, Tiling(tile, 4))]
    crops = [activation[:, :, top * factor:(top + tile) * factor, left * factor:(left + tile) * factor]
             for top, left, _ in parts]
    grids = [(tile, tile)] * len(parts)
    mean, variance = picture_moments(crops, grids, [box for _, _, box in parts], groups=4)
    grouped = activation.reshape(4, -1).astype(np.float64)
    assert np.allclose(mean, grouped.mean(axis=1)) and np.allclose(variance, grouped.var(axis=1))

    def tile_cells(array: np.ndarray, axis: int, top: int, left: int) -> np.ndarray:
        moved = np.moveaxis(array, axis, -1).reshape(1, 1, 4, height, width)[..., top:top + tile, left:left + tile]
        return np.moveaxis(moved.reshape(1, 1, 4, -1), -1, axis)

    gathered_keys = np.concatenate([owned_cells(tile_cells(keys, -1, top, left), (tile, tile), box, -1)
                                    for top, left, box in parts], -1)
    gathered_values = np.concatenate([owned_cells(tile_cells(values, -2, top, left), (tile, tile), box, -2)
                                      for top, left, box in parts], -2)
    # every cell once, in another order: attention sums over them, so the result is the whole picture's
    assert gathered_keys.shape == keys.shape
    assert np.allclose(attention(queries, gathered_keys, gathered_values), attention(queries, keys, values), atol=1e-5)


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
    # what a tile holds between segments is activations: an int8 graph's weights stay in their segments
    for variant in manifest.variants:
        for graph, float32 in ((variant.encoder, manifest.encoder), (variant.decoder, manifest.decoder)):
            assert graph.segments.held_bytes_per_cell <= float32.segments.held_bytes_per_cell


@pytest.fixture(scope="module")
def codecs(tiny_model):
    return (sdlite.Codec.load(tiny_model, precision="fp32", max_memory=1 << 50),
            sdlite.Codec.load(tiny_model, precision="fp32", tile=16))


def test_a_tiled_decode_and_encode_agree_with_the_whole_ones(codecs):
    whole, tiled = codecs
    pixels = images.to_array(photo(256, 256), 8)  # a latent of 32 x 32 cells: 3 x 3 tiles of 16
    latent = whole.run_encoder(pixels)
    reference = whole.run_decoder(latent)
    tiling = tiled.tiling("decoder", 32, 32)
    assert tiling is not None and tiling.in_step
    # Each tile alone, normalised with its own statistics, gets 19 dB (decoder) and 14 dB (encoder).
    assert psnr_of(run_tiled(tiled.decoder, latent, tiling, 1, 8), reference) < 22
    assert psnr_of(tiled.run_decoder(latent), reference) > 26
    assert psnr_of(whole.run_decoder(tiled.run_encoder(pixels)), reference) > 20


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_tiles_of_a_lower_precision_run_in_step_too(tiny_model, precision):
    whole = sdlite.Codec.load(tiny_model, precision=precision, max_memory=1 << 50)
    tiled = sdlite.Codec.load(tiny_model, precision=precision, tile=16)
    latent = whole.run_encoder(images.to_array(photo(256, 256), 8))
    reference = whole.run_decoder(latent)
    tiling = tiled.tiling("decoder", 32, 32)
    assert tiling.in_step
    # measured: 19 dB alone, 27-28 dB in step (float32's figures: int8's own rounding costs nothing here)
    assert psnr_of(run_tiled(tiled.decoder, latent, tiling, 1, 8), reference) < 22
    assert psnr_of(tiled.run_decoder(latent), reference) > 26


def test_tiles_run_alone_where_what_segments_hold_does_not_fit(tiny_model, codecs):
    whole, tiled = codecs
    assert tiled.tiling("decoder", 32, 32).in_step
    held = whole.manifest.decoder.segments.held_bytes_per_cell * 48 * 48  # 3 x 3 tiles of 16 cells
    small = sdlite.Codec.load(tiny_model, precision="fp32", tile=16, max_memory=int(held))
    assert not small.tiling("decoder", 32, 32).in_step
    assert small.decode(small.encode(photo(256, 256))).size == (256, 256)


def test_a_picture_too_large_to_run_whole_is_cut_into_tiles_that_run_in_step(tiny_model, codecs):
    whole, _ = codecs
    memory = MemoryModel(*whole.manifest.decoder.memory)
    in_step = lockstep_peak(cut(64, 64, Tiling(32, DEFAULT_OVERLAP)), memory,
                            whole.manifest.decoder.segments.held_bytes_per_cell)
    assert in_step < memory.peak(64 * 64)  # the whole run does not fit
    codec = sdlite.Codec.load(tiny_model, precision="fp32",
                              max_memory=int(in_step + PICTURE_BYTES_PER_PIXEL * 512 * 512))
    tiling = codec.tiling("decoder", 64, 64)
    # the largest tiles alone would fit too, but then normalise with their own statistics
    assert tiling is not None and tiling.tile >= 32 and tiling.in_step
    latent = whole.run_encoder(images.to_array(photo(512, 512), 8))
    reference = whole.run_decoder(latent)
    assert psnr_of(codec.run_decoder(latent), reference) > 26
    # only the segments' sessions were made, and none keeps an arena (some thirty would each keep their largest run)
    assert "decoder" not in codec._graphs
    assert not any(graph.session.get_session_options().enable_cpu_mem_arena for graph in codec._segments["decoder"])
