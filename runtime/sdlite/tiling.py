"""Running a graph over overlapping tiles, so that any image size fits in a bounded amount of memory.

The decoder's mid-block attention is quadratic in the latent's area (about 1 TB for a 4096x4096
image) and its activations grow with the image, so large images are cut into square tiles of latent
cells that overlap their neighbours. Each tile runs alone; in the overlaps the tiles are blended with
weights that fall linearly to nothing before a tile's inner edges, where it saw the least context, so
no seam shows, and an operator that reaches less than a quarter of the overlap is reproduced exactly.
Tiles are positioned on the latent grid, which the encoder's input (factor x finer) and the decoder's
output share.
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
        raise SdliteError(f"--max-memory leaves {max(budget, 0) / 2**30:.2f} GiB for one network run beside the "
                          f"picture, too little for this model: "
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
    # A tile's weights are the outer product of a row ramp and a column ramp, and every row of tiles
    # shares its row ramp, so the weights summed over the image are the outer product of the summed
    # ramps: two vectors instead of an image-sized array (64 MB at 4096x4096).
    row_ramps = [ramp_towards(rows, i, tiling, grid_height, output_factor) for i in range(len(rows))]
    column_ramps = [ramp_towards(columns, j, tiling, grid_width, output_factor) for j in range(len(columns))]
    result = None
    for i, top in enumerate(rows):
        for j, left in enumerate(columns):
            tile = array[:, :, top * input_factor:(top + tiling.tile) * input_factor,
                         left * input_factor:(left + tiling.tile) * input_factor]
            last = i + 1 == len(rows) and j + 1 == len(columns)
            out = run(np.ascontiguousarray(tile), release=last)
            if result is None:
                result = np.zeros((1, out.shape[1], grid_height * output_factor, grid_width * output_factor),
                                  dtype=np.float32)
            window = (slice(top * output_factor, top * output_factor + out.shape[2]),
                      slice(left * output_factor, left * output_factor + out.shape[3]))
            out[0] *= row_ramps[i][:, None]
            out[0] *= column_ramps[j]
            result[(0, slice(None)) + window] += out[0]
    result /= summed(row_ramps, rows, output_factor, result.shape[2])[:, None]
    result /= summed(column_ramps, columns, output_factor, result.shape[3])
    return result


def ramp_towards(starts: list[int], index: int, tiling: Tiling, length: int, factor: int) -> np.ndarray:
    """The 1-D weights of tile `index` among tiles at `starts` on a grid of `length` cells, at `factor`
    samples per cell: fading only towards its neighbours, over the cells shared with each one."""
    start, end = starts[index], min(starts[index] + tiling.tile, length)
    fade_in = (starts[index - 1] + tiling.tile - start) * factor if index else 0
    fade_out = (end - starts[index + 1]) * factor if index + 1 < len(starts) else 0
    return ramp((end - start) * factor, fade_in, fade_out)


def summed(ramps: list[np.ndarray], starts: list[int], factor: int, size: int) -> np.ndarray:
    """The ramps added up at their tiles' places along a side of `size` samples."""
    total = np.zeros(size, dtype=np.float32)
    for start, weights in zip(starts, ramps):
        total[start * factor:start * factor + weights.size] += weights
    return total
