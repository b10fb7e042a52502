"""The running of one model's networks: the precision chosen for each, their sessions (made on first
use and shared between threads), the memory model, and whole runs, tiles alone or tiles in step."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import SdliteError
from ..manifest import FP32, Manifest, Segmented, verified_graph_bytes
from ..manifest import Graph as GraphEntry  # a graph as the manifest describes it, not its session
from .inference import Graph, resolve_device
from .lockstep import run_segments, spill_bytes, spill_folder
from .precision import AUTO, check_precision, choose_graph
from .tiling import (DEFAULT_OVERLAP, MemoryModel, Tile, Tiling, blend, choose_tiling, cut, in_step_where_it_fits,
                     run_each)

# What one run of a graph and the picture's buffers beside it may take (the process's peak RSS, the
# run's as measured at export) before the image is cut into tiles.
DEFAULT_MAX_MEMORY = int(2.5 * 2**30)
# Held beside a network run, per pixel: the float32 picture going in or the float32 result being
# blended (12 bytes), and the 8-bit image it comes from or goes to (3, rounded up).
PICTURE_BYTES_PER_PIXEL = 16
# The gradient graph keeps the forward pass's activations and makes their gradients: about 3x the
# decoder's peak (TAEF2: 1.40 GB against 0.48 GB at 64x64 latent cells).
GRADIENT_MEMORY_FACTOR = 3


class Networks:
    """A model folder's graphs as the codec runs them. `precision` picks the graphs' variant (see
    precision.py), `max_memory` the bytes one graph run may take before images are cut into tiles,
    `tile` forces tiles of that many latent cells a side, `threads` onnxruntime's intra-op threads
    (None: the cores available). `spill`: tiles in step whose tensors do not fit `max_memory` hold
    them in files (see lockstep.py) rather than run alone, each normalised with its own statistics."""

    def __init__(self, folder: Path, manifest: Manifest, device: str = "cpu", precision: str = AUTO,
                 max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None, threads: int | None = None,
                 spill: bool = False):
        check_precision(precision)
        if tile is not None and tile < 4:
            raise SdliteError(f"tile of {tile} latent cells is too small: use at least 4")
        self.folder = folder
        self.manifest = manifest
        self.device = device
        self.precision = precision
        self.max_memory = max_memory
        self.tile = tile
        self.threads = threads
        self.spill = spill
        self._choices: dict[str, tuple[str, GraphEntry, MemoryModel | None, Segmented | None]] = {}
        self._graphs: dict[str, Graph] = {}
        self._segments: dict[str, list[Graph]] = {}
        self._method_graphs: dict[str, Graph] = {}
        self._lock = threading.RLock()  # _graph asks _chosen while it holds it

    def _chosen(self, role: str) -> tuple[str, GraphEntry, MemoryModel | None, Segmented | None]:
        """The precision and graph that run as `role`, with the graph's memory model and segments."""
        with self._lock:
            if role not in self._choices:
                if role == "decoder_vjp":  # float32 only: lower precisions would lose the small gradients
                    precision, entry = FP32, self.manifest.decoder_vjp
                    if entry is None:
                        raise SdliteError(f"model {self.manifest.name} has no decoder gradient graph (exported by "
                                          f"an older version): re-export it with `python -m export build`, or use "
                                          f"effort 0")
                    memory = self.manifest.decoder.memory and [GRADIENT_MEMORY_FACTOR * term
                                                               for term in self.manifest.decoder.memory]
                else:
                    precision, entry = choose_graph(self.manifest, role, self.precision, resolve_device(self.device))
                    memory = entry.memory
                self._choices[role] = precision, entry, MemoryModel(*memory) if memory else None, entry.segments
            return self._choices[role]

    def _graph(self, role: str) -> Graph:
        """The session of `role`'s graph, made on first use: decoding never pays for the encoder, nor tiles
        that run in step for the whole graph beside its segments."""
        entry = self._chosen(role)[1]
        with self._lock:  # two threads' first calls must not both load the graph
            if role not in self._graphs:
                self._graphs[role] = Graph(verified_graph_bytes(self.folder, entry), self.device, entry.input,
                                           entry.output, cache=True, threads=self.threads,
                                           label=f"{self.folder / entry.file}")
            return self._graphs[role]

    @property
    def encoder(self) -> Graph:
        return self._graph("encoder")

    @property
    def decoder(self) -> Graph:
        return self._graph("decoder")

    def export_seconds(self, role: str) -> float | None:
        """The chosen graph's time per run at the export's timing size (None where not recorded)."""
        return self._chosen(role)[1].seconds

    def precision_of(self, role: str) -> str:
        """The precision that runs as the encoder or decoder (auto resolved)."""
        return self._chosen(role)[0]

    def tiling(self, role: str, latent_height: int, latent_width: int) -> Tiling | None:
        """How the encoder or decoder cuts a latent of this size into tiles; None: in one piece. The
        tiles run in step where the graph of the precision chosen was cut into segments (the export cuts
        every graph with group norms) and what they hold between segments fits the budget beside one
        run and the picture, or else fits on the disk (see lockstep.py)."""
        _, _, memory, segmented = self._chosen(role)
        budget = self._network_budget(latent_height, latent_width)
        held = segmented.held_bytes_per_cell if segmented else None
        spill = spill_bytes() if segmented and self.spill else 0.0
        if self.tile is None:
            if memory is None:
                return None
            return choose_tiling(latent_height, latent_width, memory, budget, held_bytes_per_cell=held,
                                 spill_bytes=spill)
        if max(latent_height, latent_width) <= self.tile:
            return None
        tiling = Tiling(self.tile, min(DEFAULT_OVERLAP, self.tile // 4))
        if held is None:
            return tiling
        return in_step_where_it_fits(latent_height, latent_width, tiling, memory or MemoryModel(0, 0, 0), held,
                                     budget, spill)

    def _network_budget(self, latent_height: int, latent_width: int) -> float:
        """The bytes of --max-memory left beside the picture itself."""
        pixels = latent_height * latent_width * self.manifest.downsampling_factor**2
        return self.max_memory - PICTURE_BYTES_PER_PIXEL * pixels

    def gradient_graph(self, role: str) -> Graph:
        """The decoder's gradient graph ("decoder_vjp"), or a coding method's own (see manifest.py)."""
        return self._graph(role) if role == "decoder_vjp" else self.method_graph(role)

    def run_encoder(self, pixels: np.ndarray) -> np.ndarray:
        """The latent (NCHW) of padded pixels (NCHW in [0, 1]), in tiles where it is large."""
        factor = self.manifest.downsampling_factor
        return self._run("encoder", pixels, factor, 1)

    def run_decoder(self, latent: np.ndarray) -> np.ndarray:
        """The pixels (NCHW in [0, 1]) of a latent (NCHW), in tiles where it is large."""
        return self._run("decoder", latent, 1, self.manifest.downsampling_factor)

    def _run(self, role: str, array: np.ndarray, input_factor: int, output_factor: int) -> np.ndarray:
        """The encoder or decoder on `array`: whole, or in tiles that see the whole picture's statistics
        (segments in step) where the graph has group norms and that fits, or else in tiles run alone."""
        grid = (array.shape[2] // input_factor, array.shape[3] // input_factor)
        tiling = self.tiling(role, *grid)
        if tiling is None:
            return self._graph(role)(array)
        tiles = cut(*grid, tiling)
        if tiling.in_step:
            spill_to = spill_folder() if tiling.spilled else None
            outputs = self._run_segments(role, array, tiles, input_factor, spill_to)
        else:
            outputs = run_each(self._graph(role), array, tiles, input_factor)
        return blend(outputs, tiles, grid, output_factor)

    def _run_segments(self, role: str, array: np.ndarray, tiles: list[Tile], input_factor: int,
                      spill_to: Path | None) -> Iterator[np.ndarray]:
        segments = self._chosen(role)[3].segments
        with self._lock:
            if role not in self._segments:
                # Without arenas: each of some thirty sessions would keep the memory of its largest run,
                # 6.5 GiB for tiles that hold 1.4 GiB between segments (SD decoder, 768x512 in tiles of 43).
                self._segments[role] = [Graph(verified_graph_bytes(self.folder, s.graph), self.device, s.graph.input,
                                              s.graph.output, cache=True, threads=self.threads,
                                              label=f"{self.folder / s.graph.file}", arena=False) for s in segments]
        return run_segments(segments, self._segments[role], [np.ascontiguousarray(tile.of(array, input_factor))
                                                             for tile in tiles],
                            [tile.owned for tile in tiles], input_factor, spill_to=spill_to)

    def method_graph(self, role: str) -> Graph:
        """One of the learned method's graphs, run whole: they run at 1/8 of the picture's sides and below."""
        entry = self.manifest.latent_codec.graphs[role]
        with self._lock:
            if role not in self._method_graphs:
                self._method_graphs[role] = Graph(verified_graph_bytes(self.folder, entry), self.device, entry.input,
                                                  entry.output, cache=True, threads=self.threads,
                                                  label=f"{self.folder / entry.file}")
            return self._method_graphs[role]

    def run_method_graph(self, role: str, array: np.ndarray) -> np.ndarray:
        return self.method_graph(role)(array)
