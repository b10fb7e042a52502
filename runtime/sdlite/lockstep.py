"""Tiles run through a graph's segments in step, so that group norms and attention see the whole picture.

A group norm normalises with the mean and variance of what it sees: a tile alone gets its own, which is
why tiles that blend without seams still differ from the whole run (23 dB on the random-weight SD
decoder in tiles of 32 cells). The export cuts the encoder and decoder before every norm
(export/segments.py); here every tile runs a segment, the norm's input is summed over the cells each
tile owns (so each cell of the picture counts once, as in the whole run), and every tile is normalised
with those sums before the next segment. The mid-block attention is cut out the same way: each tile's
queries attend to the keys and values of every cell of the picture (each taken from the tile that owns
it); left to the tile, it alone holds the random-weight SD decoder's tiles to 33 dB of the whole decode.
What the tiles hold between segments is about the size of one activation over the whole picture, so
the codec takes this path only where that fits its memory budget.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .inference import give_back_freed_memory
from .manifest import Segment
from .tiling import Box


def run_segments(segments: list[Segment], runners: list, tiles: list[np.ndarray], owned: list[Box],
                 input_factor: int, watch: Callable[[dict], None] | None = None) -> list[np.ndarray]:
    """The last segment's output for each tile of `tiles` (NCHW, input_factor x its latent cells a side),
    whose owned latent cells are `owned`. `watch` sees the tensors held after each segment (for the
    export's memory measurement)."""
    grids = [(tile.shape[2] // input_factor, tile.shape[3] // input_factor) for tile in tiles]
    last_read = {name: k for k, segment in enumerate(segments) for name in segment.graph.input}
    held = [{segments[0].graph.input[0]: tile} for tile in tiles]
    for k, (segment, runner) in enumerate(zip(segments, runners)):
        for tensors in held:
            outputs = runner(*(tensors[name] for name in segment.graph.input))
            give_back_freed_memory()
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            for name in [name for name in tensors if last_read.get(name, -1) <= k]:
                del tensors[name]  # no later segment reads it
            tensors.update(zip(segment.graph.output, outputs))
        read = segment.graph.output[:1 if segment.normalised else 3 if segment.attended else 0]
        if segment.normalised is not None:
            mean, variance = picture_moments([t[read[0]] for t in held], grids, owned, segment.groups)
        if segment.attended is not None:
            keys = np.concatenate([owned_cells(t[read[1]], grid, box, -1) for t, grid, box in zip(held, grids, owned)], -1)
            values = np.concatenate([owned_cells(t[read[2]], grid, box, -2) for t, grid, box in zip(held, grids, owned)], -2)
        for tensors in held:  # a tile at a time, so that only one tile holds a norm's input and output at once
            if segment.normalised is not None:
                tensors[segment.normalised] = normalised(tensors[read[0]], mean, variance, segment.epsilon)
            if segment.attended is not None:
                tensors[segment.attended] = attention(tensors[read[0]], keys, values)
            for name in read:
                if last_read.get(name, -1) <= k:
                    tensors.pop(name, None)
        if watch is not None:
            watch({f"{i}/{name}": array for i, tensors in enumerate(held) for name, array in tensors.items()})
    final = segments[-1].graph.output[0]
    return [tensors[final] for tensors in held]


def spatial(array: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A norm's input as (channels, height, width) over a tile of `grid` latent cells: attention norms
    see (1, channels, height * width)."""
    if array.ndim == 4:
        return array[0]
    factor = int(round(np.sqrt(array.shape[2] / (grid[0] * grid[1]))))
    return array[0].reshape(array.shape[1], grid[0] * factor, grid[1] * factor)


def picture_moments(inputs: list[np.ndarray], grids: list[tuple[int, int]], owned: list[Box],
                    groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per group over the cells the tiles own, in float64 (a picture-wide sum of squares)."""
    total = np.zeros(groups)
    squares = np.zeros(groups)
    count = 0
    for array, grid, (top, bottom, left, right) in zip(inputs, grids, owned):
        values = spatial(array, grid)
        factor = values.shape[1] // grid[0]
        part = values[:, top * factor:bottom * factor, left * factor:right * factor]
        part = part.reshape(groups, -1)
        total += part.sum(axis=1, dtype=np.float64)
        squares += np.einsum("ij,ij->i", part, part, dtype=np.float64)  # no float64 copy of the tile
        count += part.shape[1]
    mean = total / count
    return mean, np.maximum(squares / count - mean * mean, 0.0)


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
    return np.moveaxis(cells.reshape(*moved.shape[:-1], -1), -1, axis)


def attention(queries: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """softmax(queries @ keys) @ values, the keys already transposed (as the export computes it)."""
    scores = queries.astype(np.float32) @ keys.astype(np.float32)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return (scores @ values.astype(np.float32)).astype(queries.dtype)
