"""Running a graph over overlapping tiles, so that any image size fits in a bounded amount of memory.

The decoder's mid-block attention is quadratic in the latent's area (about 1 TB for a 4096x4096
image) and its activations grow with the image, so large images are cut into square tiles of latent
cells that overlap their neighbours. Each tile runs alone; in the overlaps the tiles are blended with
weights that fall linearly to nothing before a tile's inner edges, where it saw the least context, so
no seam shows, and an operator that reaches less than a quarter of the overlap is reproduced exactly. Tiles are positioned on the latent grid, which the encoder's input (factor x finer) and
the decoder's output share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import SdliteError

DEFAULT_OVERLAP = 8  # latent cells: 64 pixels of context on each side of a seam
MIN_TILE = 16


@dataclass(frozen=True)
class Tiling:
    tile: int  # latent cells along a tile's side
    overlap: int  # latent cells that neighbouring tiles share at least


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes of one run of a graph on a square of `cells` latent cells:
    fixed + linear * cells + quadratic * cells**2 (the quadratic part is attention)."""

    fixed: float
    linear: float
    quadratic: float

    def peak(self, cells: int) -> float:
        return self.fixed + self.linear * cells + self.quadratic * cells * cells

    def largest_side(self, budget: float) -> int:
        """The side of the largest square of latent cells whose run fits in `budget` bytes (0: none)."""
        a, b, c = self.quadratic, self.linear, self.fixed - budget
        if c >= 0:
            return 0
        cells = -c / b if a == 0 else (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
        return int(np.sqrt(cells))


def choose_tiling(latent_height: int, latent_width: int, memory: MemoryModel, budget: float,
                  overlap: int = DEFAULT_OVERLAP) -> Tiling | None:
    """None when the whole latent fits in `budget` bytes, otherwise the largest tiles that do."""
    if memory.peak(latent_height * latent_width) <= budget:
        return None
    side = memory.largest_side(budget)
    if side < max(MIN_TILE, 2 * overlap):
        raise SdliteError(f"--max-memory {budget / 2**30:.2f} GiB is too little for this model: "
                          f"even a {MIN_TILE}x{MIN_TILE}-cell tile needs {memory.peak(MIN_TILE**2) / 2**30:.2f} GiB")
    return Tiling(side, overlap)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest tiles of side `tile` that cover [0, length) sharing at least `overlap`,
    spread evenly so that every tile has the same size (one compiled shape for the whole image)."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def owned_span(starts: list[int], index: int, tile: int) -> tuple[int, int]:
    """The cells that tile `index` of those at `starts` owns outright: from the middle of its overlap
    with the tile before to the middle of its overlap with the tile after."""
    begin = 0 if index == 0 else (starts[index] + starts[index - 1] + tile) // 2
    end = starts[index] + tile if index + 1 == len(starts) else (starts[index + 1] + starts[index] + tile) // 2
    return begin, end


def ramp(size: int, fade_in: int, fade_out: int) -> np.ndarray:
    """1-D blending weights over a tile that shares its first `fade_in` and last `fade_out` samples
    with its neighbours: nothing on the outer quarter of a shared stretch (where the tile saw least
    context), rising linearly over its middle half, so that two neighbours' weights add up to one."""
    position = np.arange(size, dtype=np.float32) + 0.5
    weight = np.ones(size, dtype=np.float32)
    for fade, distance in ((fade_in, position), (fade_out, size - position)):
        if fade:
            margin = fade // 4
            weight = np.minimum(weight, np.clip((distance - margin) / (fade - 2 * margin), 0, 1))
    return weight


def run_tiled(run: Callable[..., np.ndarray], array: np.ndarray, tiling: Tiling,
              input_factor: int, output_factor: int) -> np.ndarray:
    """`run` over overlapping tiles of `array` (NCHW, sides input_factor x the latent grid's), blended
    into one NCHW result whose sides are output_factor x the latent grid's. `run(tile, release=...)`
    is told on the last tile that its working memory is no longer needed."""
    grid_height, grid_width = array.shape[2] // input_factor, array.shape[3] // input_factor
    rows = tile_starts(grid_height, tiling.tile, tiling.overlap)
    columns = tile_starts(grid_width, tiling.tile, tiling.overlap)
    result = weights = None
    for i, top in enumerate(rows):
        bottom = min(top + tiling.tile, grid_height)
        for j, left in enumerate(columns):
            right = min(left + tiling.tile, grid_width)
            tile = array[:, :, top * input_factor:bottom * input_factor, left * input_factor:right * input_factor]
            last = i + 1 == len(rows) and j + 1 == len(columns)
            out = run(np.ascontiguousarray(tile), release=last)
            if result is None:
                result = np.zeros((1, out.shape[1], grid_height * output_factor, grid_width * output_factor),
                                  dtype=np.float32)
                weights = np.zeros(result.shape[2:], dtype=np.float32)
            # Fade only towards neighbours, over the cells shared with each one.
            fade_top = (rows[i - 1] + tiling.tile - top) * output_factor if i else 0
            fade_bottom = (bottom - rows[i + 1]) * output_factor if i + 1 < len(rows) else 0
            fade_left = (columns[j - 1] + tiling.tile - left) * output_factor if j else 0
            fade_right = (right - columns[j + 1]) * output_factor if j + 1 < len(columns) else 0
            weight = np.outer(ramp(out.shape[2], fade_top, fade_bottom), ramp(out.shape[3], fade_left, fade_right))
            window = (slice(top * output_factor, bottom * output_factor),
                      slice(left * output_factor, right * output_factor))
            result[(0, slice(None)) + window] += out[0] * weight
            weights[window] += weight
    result /= weights
    return result
