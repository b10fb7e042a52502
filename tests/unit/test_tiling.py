"""Tiling arithmetic without a network: tile starts, blending, the memory model and the choice of tiles."""

from __future__ import annotations

import numpy as np
import pytest

import sdlite
from sdlite.networks.tiling import MemoryModel, Tiling, choose_tiling, cut, lockstep_peak, run_tiled, tile_starts

from allocations import peak_allocated


def box_blur(array: np.ndarray) -> np.ndarray:
    """A local operator (each output sees its 3x3 neighbourhood), like a network with a small reach."""
    padded = np.pad(array, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    height, width = array.shape[2:]
    return sum(padded[:, :, i:i + height, j:j + width] for i in range(3) for j in range(3)) / 9


@pytest.mark.parametrize("length,tile,overlap", [(37, 16, 4), (16, 16, 4), (5, 16, 4), (100, 24, 8), (17, 16, 8)])
def test_tiles_cover_the_grid_overlap_enough_and_have_one_size(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert all(start + tile <= length for start in starts) or starts == [0]


def decode_like(latent: np.ndarray, release: bool = False) -> np.ndarray:
    return box_blur(latent.repeat(8, 2).repeat(8, 3)[:, :3])


def encode_like(pixels: np.ndarray, release: bool = False) -> np.ndarray:
    return box_blur(pixels).reshape(1, 3, pixels.shape[2] // 8, 8, pixels.shape[3] // 8, 8).mean((3, 5))


def test_blending_reproduces_an_operator_that_sees_less_than_the_overlap():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(1, 4, 37, 29)).astype(np.float32)
    tiled = run_tiled(decode_like, latent, Tiling(12, 4), 1, 8)
    whole = decode_like(latent)
    # Away from the tiles' own edges each tile sees what the whole does; the edges get no weight.
    assert np.abs(tiled - whole).max() < 1e-5
    picture = rng.uniform(size=(1, 3, 37 * 8, 29 * 8)).astype(np.float32)
    assert np.abs(run_tiled(encode_like, picture, Tiling(12, 4), 8, 1) - encode_like(picture)).max() < 1e-5


def test_tiling_follows_the_memory_budget():
    memory = MemoryModel(fixed=100e6, linear=0.3e6, quadratic=12.0)
    assert choose_tiling(64, 64, memory, budget=4e9) is None
    tiling = choose_tiling(512, 512, memory, budget=2e9)
    assert tiling is not None and memory.peak(tiling.tile**2) <= 2e9 < memory.peak((tiling.tile + 1) ** 2)
    with pytest.raises(sdlite.SdliteError, match="too little"):
        choose_tiling(512, 512, memory, budget=150e6)


def test_tiles_that_can_run_in_step_are_made_small_enough_to():
    memory = MemoryModel(fixed=100e6, linear=0.3e6, quadratic=12.0)
    alone = choose_tiling(64, 96, memory, budget=2e9)
    # two tiles of 79 cells would hold 1 GB between segments beside a 1.6 GB run
    in_step = choose_tiling(64, 96, memory, budget=2e9, held_bytes_per_cell=0.1e6)
    assert in_step.tile < alone.tile
    peak = lockstep_peak(cut(64, 96, in_step), memory, 0.1e6)
    assert peak <= 2e9 < lockstep_peak(cut(64, 96, Tiling(in_step.tile + 1, in_step.overlap)), memory, 0.1e6)
    # where no tiles fit in step, the largest that fit alone
    assert choose_tiling(512, 512, memory, budget=2e9, held_bytes_per_cell=0.1e6) == choose_tiling(512, 512, memory, 2e9)


def test_tiles_in_step_too_large_to_hold_in_memory_write_it_to_disk_where_it_has_room():
    memory = MemoryModel(fixed=100e6, linear=0.3e6, quadratic=12.0)
    held = 0.1e6 * 512 * 512  # 26 GB over the whole picture, more with the overlaps
    spilled = choose_tiling(512, 512, memory, budget=2e9, held_bytes_per_cell=0.1e6, spill_bytes=2 * held)
    assert spilled.in_step and spilled.spilled
    # one tile's tensors beside its run: smaller tiles than alone, the largest that fit so
    peak = lockstep_peak(cut(512, 512, spilled), memory, 0.1e6, spilled=True)
    larger = Tiling(spilled.tile + 1, spilled.overlap)
    assert peak <= 2e9 < lockstep_peak(cut(512, 512, larger), memory, 0.1e6, spilled=True)
    assert spilled.tile < choose_tiling(512, 512, memory, budget=2e9).tile
    # a disk without room for what all the tiles hold: tiles alone
    alone = choose_tiling(512, 512, memory, budget=2e9, held_bytes_per_cell=0.1e6, spill_bytes=held)
    assert alone == choose_tiling(512, 512, memory, 2e9)
    # in memory where it fits, though files would allow larger tiles
    assert not choose_tiling(64, 96, memory, budget=2e9, held_bytes_per_cell=0.1e6, spill_bytes=2 * held).spilled


def test_blending_weights_add_up_where_three_tiles_overlap():
    # 21 cells in tiles of 12: starts 0, 4 (or 5), 9, so the middle cells lie in all three tiles.
    latent = np.full((1, 4, 21, 21), 0.25, dtype=np.float32)
    tiled = run_tiled(decode_like, latent, Tiling(12, 4), 1, 8)
    assert len(tile_starts(21, 12, 4)) == 3
    assert np.abs(tiled - 0.25).max() < 1e-6


def test_blending_holds_no_picture_sized_buffer_beside_the_result():
    latent = np.random.default_rng(0).normal(size=(1, 3, 128, 128)).astype(np.float32)
    result, peak = peak_allocated(run_tiled, upscale, latent, Tiling(48, 8), 1, 8)
    # The result (1024 x 1024 x 3 float32, 12 MiB) and a tile's output; an image-sized float32
    # weights array beside them would add 4 MiB.
    tile_bytes = 3 * (48 * 8) ** 2 * 4
    assert peak < result.nbytes + 3 * tile_bytes < result.nbytes + 4 * 2**20 + tile_bytes


def upscale(latent: np.ndarray, release: bool = False) -> np.ndarray:
    return latent.repeat(8, 2).repeat(8, 3)


def test_sessions_plan_no_memory_pattern():
    # A memory pattern makes the arena hold a second copy of a run's working memory from the second
    # run on, which tiling's memory model (and the 4 GB aim at 4096 x 4096) does not allow for.
    from sdlite.networks.inference import session_options

    assert session_options().enable_mem_pattern is False

