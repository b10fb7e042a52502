"""Tiles run in step: the whole picture's group-norm statistics and attention gathered from the tiles'
owned cells, and the tiles' tensors held in files between segments."""

from __future__ import annotations

import os

import numpy as np
import pytest

import sdlite
from sdlite.networks import lockstep
from sdlite.networks.lockstep import Moments, attention, owned_cells
from sdlite.networks.tiling import Tiling, cut


@pytest.mark.parametrize("scores_bytes", [lockstep.SCORES_BYTES, 4 * 20])  # all rows at once; 4 rows at a time
def test_moments_and_attention_over_owned_cells_are_the_whole_picture_s(scores_bytes, monkeypatch):
    monkeypatch.setattr(lockstep, "SCORES_BYTES", scores_bytes)
    rng = np.random.default_rng(0)
    height, width, tile, factor = 21, 30, 12, 2  # three tiles a side, activations at twice the grid
    activation = rng.normal(1.0, 2.0, (1, 8, height * factor, width * factor)).astype(np.float32)
    queries, keys, values = (rng.normal(size=shape).astype(np.float32) for shape in
                             ((1, 1, height * width, 4), (1, 1, 4, height * width), (1, 1, height * width, 4)))
    parts = [(t.rows.start, t.columns.start, t.owned) for t in cut(height, width, Tiling(tile, 4))]
    crops = [activation[:, :, top * factor:(top + tile) * factor, left * factor:(left + tile) * factor]
             for top, left, _ in parts]
    moments = Moments(groups=4)
    for crop, (_, _, box) in zip(crops, parts):
        moments.add(crop, (tile, tile), box)
    mean, variance = moments.result()
    grouped = activation.reshape(4, -1).astype(np.float64)
    assert np.allclose(mean, grouped.mean(axis=1)) and np.allclose(variance, grouped.var(axis=1))

    def tile_cells(array: np.ndarray, axis: int, top: int, left: int) -> np.ndarray:
        moved = np.moveaxis(array, axis, -1).reshape(1, 1, 4, height, width)[..., top:top + tile, left:left + tile]
        return np.moveaxis(moved.reshape(1, 1, 4, -1), -1, axis)

    cells = [(owned_cells(tile_cells(keys, -1, top, left), (tile, tile), box, -1),
              owned_cells(tile_cells(values, -2, top, left), (tile, tile), box, -2)) for top, left, box in parts]
    # every cell once, in another order: attention sums over them, so the result is the whole picture's
    assert sum(part.shape[-1] for part, _ in cells) == keys.shape[-1]
    scores = queries[0, 0] @ keys[0, 0]
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    expected = (weights / weights.sum(axis=-1, keepdims=True)) @ values[0, 0]
    assert np.allclose(attention(queries, cells)[0, 0], expected, atol=1e-5)


def test_tensors_held_in_files_come_back_as_they_went_and_a_folder_that_cannot_be_made_is_one_clear_error(tmp_path):
    abandoned, running = tmp_path / "tiles" / "999999999-x", tmp_path / "tiles" / f"{os.getpid()}-y"
    for folder in (abandoned, running):
        folder.mkdir(parents=True)
        (folder / "0.raw").write_bytes(b"0")
    held = lockstep.Spilled(tmp_path / "tiles")
    assert not abandoned.exists() and running.exists()  # a killed process's files go, a running one's stay
    tensors = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2], "k": np.ones((1, 5), np.float16)}
    held.put(0, tensors)
    assert len(list(held.folder.iterdir())) == 2 and held.in_memory() == {}
    back = held.take(0)
    assert all(np.array_equal(back[name], tensors[name]) and back[name].dtype == tensors[name].dtype for name in tensors)
    assert not any(held.folder.iterdir())
    held.close()
    assert not held.folder.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(sdlite.SdliteError, match="cannot make a folder for the tiles' tensors"):
        lockstep.Spilled(tmp_path / "file" / "tiles")

