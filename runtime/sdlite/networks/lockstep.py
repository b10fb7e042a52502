"""Tiles run through a graph's segments in step, so that group norms and attention see the whole picture.

A group norm normalises with the mean and variance of what it sees: a tile alone gets its own, which is
why tiles that blend without seams still differ from the whole run (23 dB on the random-weight SD
decoder in tiles of 32 cells). The export cuts the encoder and decoder before every norm
(export/segments.py); here every tile runs a segment, the norm's input is summed over the cells each
tile owns (so each cell of the picture counts once, as in the whole run), and every tile is normalised
with those sums as it starts the next segment. The mid-block attention is cut out the same way: each
tile's queries attend to the keys and values of every cell of the picture (each taken from the tile
that owns it); left to the tile, it alone holds the random-weight SD decoder's tiles to 33 dB of the
whole decode.

What the tiles hold between segments is about the size of one activation over the whole picture
(34 GB for the SD decoder at 4096x4096). Where that does not fit the memory budget it can be written
to files instead (`Spilled`), so that only the tile being run is in memory; each segment then reads
and writes it once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import SdliteError
from .inference import cache_dir, give_back_freed_memory
from ..manifest import Segment
from .tiling import Box

# Attention scores made at once: enough rows of a tile's queries against one tile's keys to fill this.
SCORES_BYTES = 32 << 20


class Held:
    """The tensors the tiles hold between segments, in memory, by key: a tile's number, or ("cells", its
    number) for the keys and values of the cells it owns."""

    def __init__(self) -> None:
        self._tiles: dict[object, dict[str, np.ndarray]] = {}

    def put(self, key: object, tensors: dict[str, np.ndarray]) -> None:
        self._tiles[key] = tensors

    def get(self, key: object) -> dict[str, np.ndarray]:
        return self._tiles[key]

    def take(self, key: object) -> dict[str, np.ndarray]:
        tensors = self.get(key)
        self.drop(key)
        return tensors

    def drop(self, key: object) -> None:
        del self._tiles[key]

    def in_memory(self) -> dict[str, np.ndarray]:
        return {f"{key}/{name}": array for key, tensors in self._tiles.items() for name, array in tensors.items()}

    def close(self) -> None:
        self._tiles.clear()


class Spilled(Held):
    """The same, written to files in a folder of its own under `parent` (removed by close)."""

    def __init__(self, parent: Path) -> None:
        super().__init__()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned(parent)
            self.folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
        except OSError as exc:
            raise SdliteError(f"cannot make a folder for the tiles' tensors in {parent}: {exc.strerror}") from None
        self._files: dict[object, dict[str, tuple[Path, np.dtype, tuple[int, ...]]]] = {}
        self._written = 0

    def put(self, key: object, tensors: dict[str, np.ndarray]) -> None:
        files = {}
        for name, array in tensors.items():
            path = self.folder / f"{self._written}.raw"
            self._written += 1
            try:
                array.tofile(path)
            except OSError as exc:  # the disk filled up since the tiling was chosen, say
                raise SdliteError(f"cannot write the tiles' tensors to {self.folder}: {exc.strerror}") from None
            files[name] = path, array.dtype, array.shape
        self._files[key] = files

    def get(self, key: object) -> dict[str, np.ndarray]:
        return {name: np.fromfile(path, dtype).reshape(shape) for name, (path, dtype, shape) in self._files[key].items()}

    def drop(self, key: object) -> None:
        for path, _, _ in self._files.pop(key).values():
            path.unlink()

    def in_memory(self) -> dict[str, np.ndarray]:
        return {}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def spill_folder() -> Path:
    """Where tiles in step write what they hold when memory cannot: beside the optimised-graph cache,
    on a disk (a temporary folder may be memory: tmpfs)."""
    return cache_dir() / "tiles"


def spill_bytes() -> float:
    """The bytes tiles in step may write there: nine tenths of the disk's free space; none where the
    folder cannot be written (it is made when first needed)."""
    folder = spill_folder().absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    return 0.9 * shutil.disk_usage(existing).free if os.access(existing, os.W_OK) else 0.0


def remove_abandoned(parent: Path) -> None:
    """Removes the folders of processes that ended without removing theirs (killed): tens of GB each."""
    for folder in parent.iterdir():
        owner = folder.name.split("-")[0]
        if owner.isdigit() and not process_exists(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)


def process_exists(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def run_segments(segments: list[Segment], runners: list, tiles: list[np.ndarray], owned: list[Box],
                 input_factor: int, watch: Callable[[dict], None] | None = None,
                 spill_to: Path | None = None) -> Iterator[np.ndarray]:
    """The last segment's output for each tile of `tiles` (NCHW, input_factor x its latent cells a side),
    whose owned latent cells are `owned`, yielded in order. Between segments the tiles' tensors are held
    in memory, or in files in a folder made under `spill_to`; `watch` sees those in memory after each
    segment (for the export's memory measurement)."""
    held = Spilled(spill_to) if spill_to is not None else Held()
    try:
        grids = [(tile.shape[2] // input_factor, tile.shape[3] // input_factor) for tile in tiles]
        last_read = {name: k for k, segment in enumerate(segments) for name in segment.graph.input}
        for number, tile in enumerate(tiles):
            held.put(number, {segments[0].graph.input[0]: tile})
        del tiles
        moments = None  # of the previous segment's norm input, over the whole picture
        for k, (segment, runner) in enumerate(zip(segments, runners)):
            summed = Moments(segment.groups) if segment.normalised is not None else None
            for number, grid in enumerate(grids):
                tensors = held.take(number)
                if k:
                    finish(segments[k - 1], k - 1, tensors, last_read, moments, held, len(grids))
                outputs = runner(*(tensors[name] for name in segment.graph.input))
                give_back_freed_memory()
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                for name in [name for name in tensors if last_read.get(name, -1) <= k]:
                    del tensors[name]  # no later segment reads it
                tensors.update(zip(segment.graph.output, outputs))
                if summed is not None:
                    summed.add(tensors[segment.graph.output[0]], grid, owned[number])
                if segment.attended is not None:  # the keys and values of the cells this tile owns
                    keys, values = (tensors[name] for name in segment.graph.output[1:3])
                    held.put(("cells", number), {"keys": owned_cells(keys, grid, owned[number], -1),
                                                 "values": owned_cells(values, grid, owned[number], -2)})
                held.put(number, tensors)
            if k and segments[k - 1].attended is not None:
                for number in range(len(grids)):
                    held.drop(("cells", number))
            moments = summed.result() if summed is not None else None
            if watch is not None:
                watch(held.in_memory())
        final = segments[-1].graph.output[0]
        for number in range(len(grids)):
            yield held.take(number)[final]
    finally:
        held.close()


def finish(segment: Segment, k: int, tensors: dict[str, np.ndarray], last_read: dict[str, int],
           moments: tuple[np.ndarray, np.ndarray] | None, held: Held, tiles: int) -> None:
    """Completes segment k's cut for one tile: its norm with the picture's moments, or its attention over
    every tile's cells; then drops what it read that no later segment reads."""
    read = segment.graph.output[:1 if segment.normalised else 3 if segment.attended else 0]
    if segment.normalised is not None:
        tensors[segment.normalised] = normalised(tensors[read[0]], *moments, segment.epsilon)
    if segment.attended is not None:
        cells = (held.get(("cells", number)) for number in range(tiles))
        tensors[segment.attended] = attention(tensors[read[0]], ((c["keys"], c["values"]) for c in cells))
    for name in read:
        if last_read.get(name, -1) <= k:
            tensors.pop(name, None)


def spatial(array: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A norm's input as (channels, height, width) over a tile of `grid` latent cells: attention norms
    see (1, channels, height * width)."""
    if array.ndim == 4:
        return array[0]
    factor = int(round(np.sqrt(array.shape[2] / (grid[0] * grid[1]))))
    return array[0].reshape(array.shape[1], grid[0] * factor, grid[1] * factor)


class Moments:
    """Mean and variance per group of a norm's input over the cells the tiles own, summed in float64 (a
    picture-wide sum of squares) as the tiles come."""

    def __init__(self, groups: int) -> None:
        self.total = np.zeros(groups)
        self.squares = np.zeros(groups)
        self.count = 0

    def add(self, array: np.ndarray, grid: tuple[int, int], box: Box) -> None:
        """A tile's norm input `array` over its `grid` of latent cells, of which it owns `box`."""
        values = spatial(array, grid)
        factor = values.shape[1] // grid[0]
        top, bottom, left, right = box
        part = values[:, top * factor:bottom * factor, left * factor:right * factor].reshape(self.total.size, -1)
        self.total += part.sum(axis=1, dtype=np.float64)
        self.squares += np.einsum("ij,ij->i", part, part, dtype=np.float64)  # no float64 copy of the tile
        self.count += part.shape[1]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.count
        return mean, np.maximum(self.squares / self.count - mean * mean, 0.0)


def normalised(array: np.ndarray, mean: np.ndarray, variance: np.ndarray, epsilon: float) -> np.ndarray:
    """What the export's Reshape and InstanceNormalization give for `array`, with the picture's statistics:
    (1, groups, elements per group), in `array`'s precision."""
    grouped = array.reshape(1, mean.size, -1).astype(np.float32, copy=False)
    result = grouped - mean.astype(np.float32)[:, None]
    result *= (1.0 / np.sqrt(variance + epsilon)).astype(np.float32)[:, None]  # in place: one array made, not two
    return result.astype(array.dtype, copy=False)


def owned_cells(array: np.ndarray, grid: tuple[int, int], box: Box, axis: int) -> np.ndarray:
    """The entries of `array` along `axis` (the tile's latent cells, row by row) in the owned `box`."""
    top, bottom, left, right = box
    height, width = grid
    moved = np.moveaxis(array, axis, -1)
    cells = moved.reshape(*moved.shape[:-1], height, width)[..., top:bottom, left:right]
    # a copy, not a view: held as the tile's part of the picture, a view would keep all of the tile's cells
    return np.ascontiguousarray(np.moveaxis(cells.reshape(*moved.shape[:-1], -1), -1, axis))


def attention(queries: np.ndarray, cells: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """softmax(queries @ keys) @ values over the (keys, values) of every part of the picture in `cells`,
    the keys already transposed (as the export computes it). The softmax runs part by part with a
    running maximum and sum, a few rows at a time: a tile's scores against a 4096x4096 picture's
    keys at once would take 16 GB."""
    rows = queries.astype(np.float32, copy=False)  # float32 graphs' tensors already are: no copy per tile
    highest = np.full((*rows.shape[:-1], 1), -np.inf, np.float32)
    total = np.zeros_like(highest)
    result = None
    for keys, values in cells:
        keys, values = keys.astype(np.float32, copy=False), values.astype(np.float32, copy=False)
        if result is None:
            result = np.zeros((*rows.shape[:-1], values.shape[-1]), np.float32)
        step = max(1, SCORES_BYTES // (4 * keys.shape[-1]))
        for start in range(0, rows.shape[-2], step):
            part = slice(start, start + step)
            scores = rows[..., part, :] @ keys
            top = np.maximum(highest[..., part, :], scores.max(axis=-1, keepdims=True))
            scale = np.exp(highest[..., part, :] - top)  # what the sums so far are worth beside the new maximum
            np.exp(scores - top, out=scores)
            total[..., part, :] = total[..., part, :] * scale + scores.sum(axis=-1, keepdims=True)
            result[..., part, :] = result[..., part, :] * scale + scores @ values
            highest[..., part, :] = top
    result /= total
    return result.astype(queries.dtype)
