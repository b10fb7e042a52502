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
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import SdliteError

DEFAULT_OVERLAP = 8  # latent cells: 64 pixels of context on each side of a seam
MIN_TILE = 16
Box = tuple[int, int, int, int]  # rows and columns (from, to) of latent cells, relative to a tile


@dataclass(frozen=True)
class Tiling:
    tile: int  # latent cells along a tile's side
    overlap: int  # latent cells that neighbouring tiles share at least
    in_step: bool = False  # the tiles run a graph's segments in step (lockstep.py) rather than alone
    spilled: bool = False  # in step, with what the tiles hold between segments in files rather than memory


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
                  overlap: int = DEFAULT_OVERLAP, held_bytes_per_cell: float | None = None,
                  spill_bytes: float = 0.0) -> Tiling | None:
    """None when the whole latent fits in `budget` bytes. Otherwise, for a graph whose tiles can run in
    step (`held_bytes_per_cell` given: see lockstep.py), the largest tiles whose run in step fits, where
    some do: smaller tiles hold less beside their run, and in step they agree with the whole run; first
    with what they hold in memory, then written to files where `spill_bytes` of disk can take it. Else
    the largest tiles that fit alone."""
    if memory.peak(latent_height * latent_width) <= budget:
        return None
    side = memory.largest_side(budget)
    smallest = max(MIN_TILE, 2 * overlap)
    if side < smallest:
        raise SdliteError(f"--max-memory leaves {max(budget, 0) / 2**30:.2f} GiB for one network run beside the "
                          f"picture, too little for this model: "
                          f"even a {MIN_TILE}x{MIN_TILE}-cell tile needs {memory.peak(MIN_TILE**2) / 2**30:.2f} GiB")
    if held_bytes_per_cell is not None:
        for spill in (0.0, spill_bytes) if spill_bytes else (0.0,):  # in memory at any size before files
            for tile in range(side, smallest - 1, -1):
                tiling = in_step_where_it_fits(latent_height, latent_width, Tiling(tile, overlap), memory,
                                               held_bytes_per_cell, budget, spill)
                if tiling.in_step:
                    return tiling
    return Tiling(side, overlap)


def in_step_where_it_fits(latent_height: int, latent_width: int, tiling: Tiling, memory: MemoryModel,
                          held_bytes_per_cell: float, budget: float, spill_bytes: float = 0.0) -> Tiling:
    """`tiling` run in step where that keeps within `budget` bytes: with what the tiles hold between
    segments in memory, or where only that is too much and `spill_bytes` of disk can take it, in files;
    else run alone."""
    tiles = cut(latent_height, latent_width, tiling)
    if lockstep_peak(tiles, memory, held_bytes_per_cell) <= budget:
        return Tiling(tiling.tile, tiling.overlap, in_step=True)
    held = held_bytes_per_cell * sum(tile.area for tile in tiles)
    if held <= spill_bytes and lockstep_peak(tiles, memory, held_bytes_per_cell, spilled=True) <= budget:
        return Tiling(tiling.tile, tiling.overlap, in_step=True, spilled=True)
    return Tiling(tiling.tile, tiling.overlap)


def lockstep_peak(tiles: list[Tile], memory: MemoryModel, held_bytes_per_cell: float, spilled: bool = False) -> float:
    """Peak bytes of tiles run in step: what they all hold between segments (only the largest tile's when
    it is kept in files), beside a run of the largest (the whole graph's peak bounds a segment's)."""
    largest = max(tile.area for tile in tiles)
    return held_bytes_per_cell * (largest if spilled else sum(tile.area for tile in tiles)) + memory.peak(largest)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest tiles of side `tile` that cover [0, length) sharing at least `overlap`,
    spread evenly so that every tile has the same size (one compiled shape for the whole image)."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class Span:
    """A tile's stretch along one side of the grid, in cells: where it starts, its length, what it
    shares with the tiles before and after it (where it is blended), and the part it owns outright
    (from the middle of one shared stretch to the middle of the next), relative to its start."""

    start: int
    length: int
    shared_before: int
    shared_after: int
    owned: tuple[int, int]


def spans(length: int, tiling: Tiling) -> list[Span]:
    starts = tile_starts(length, tiling.tile, tiling.overlap)
    ends = [min(start + tiling.tile, length) for start in starts]
    found = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        before = ends[i - 1] - start if i else 0
        after = end - starts[i + 1] if i + 1 < len(starts) else 0
        found.append(Span(start, end - start, before, after, (before // 2, end - start - (after + 1) // 2)))
    return found


@dataclass(frozen=True)
class Tile:
    """A tile of the latent grid: its stretch of rows and of columns."""

    rows: Span
    columns: Span

    @property
    def area(self) -> int:
        return self.rows.length * self.columns.length

    @property
    def owned(self) -> Box:
        return self.rows.owned + self.columns.owned

    def of(self, array: np.ndarray, factor: int) -> np.ndarray:
        """The tile's part (a view) of an array whose last two axes have `factor` samples a cell."""
        return array[..., self.rows.start * factor:(self.rows.start + self.rows.length) * factor,
                     self.columns.start * factor:(self.columns.start + self.columns.length) * factor]


def cut(grid_height: int, grid_width: int, tiling: Tiling) -> list[Tile]:
    """The tiles of a grid of latent cells, row by row."""
    return [Tile(rows, columns) for rows in spans(grid_height, tiling) for columns in spans(grid_width, tiling)]


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


def run_each(run: Callable[..., np.ndarray], array: np.ndarray, tiles: list[Tile],
             input_factor: int) -> Iterator[np.ndarray]:
    """`run` on each tile of `array` alone; `run(tile, release=...)` is told on the last tile that its
    working memory is no longer needed."""
    for tile in tiles:
        yield run(np.ascontiguousarray(tile.of(array, input_factor)), release=tile is tiles[-1])


def blend(outputs: Iterable[np.ndarray], tiles: list[Tile], grid: tuple[int, int], output_factor: int) -> np.ndarray:
    """The tiles' outputs (NCHW, one for each tile in order, output_factor x its cells a side) blended
    into one NCHW result over the whole grid."""
    # A tile's weights are the outer product of a row ramp and a column ramp, and every row of tiles
    # shares its row ramp, so the weights summed over the image are the outer product of the summed
    # ramps: two vectors instead of an image-sized array (64 MB at 4096x4096).
    row_total = np.zeros(grid[0] * output_factor, dtype=np.float32)
    column_total = np.zeros(grid[1] * output_factor, dtype=np.float32)
    result = None
    for tile, out in zip(tiles, outputs, strict=True):
        row_weights, column_weights = (ramp(span.length * output_factor, span.shared_before * output_factor,
                                            span.shared_after * output_factor) for span in (tile.rows, tile.columns))
        if result is None:
            result = np.zeros((1, out.shape[1], *(side * output_factor for side in grid)), dtype=np.float32)
        out[0] *= row_weights[:, None]
        out[0] *= column_weights
        tile.of(result, output_factor)[0] += out[0]
        if tile.columns.start == 0:  # each row of tiles' ramp counted once
            row_total[tile.rows.start * output_factor:][:row_weights.size] += row_weights
        if tile.rows.start == 0:
            column_total[tile.columns.start * output_factor:][:column_weights.size] += column_weights
    result /= row_total[:, None]
    result /= column_total
    return result


def run_tiled(run: Callable[..., np.ndarray], array: np.ndarray, tiling: Tiling,
              input_factor: int, output_factor: int) -> np.ndarray:
    """`run` over overlapping tiles of `array` (NCHW, sides input_factor x the latent grid's), blended
    into one NCHW result whose sides are output_factor x the latent grid's."""
    grid = (array.shape[2] // input_factor, array.shape[3] // input_factor)
    tiles = cut(*grid, tiling)
    return blend(run_each(run, array, tiles, input_factor), tiles, grid, output_factor)
