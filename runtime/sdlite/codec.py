"""The codec: image -> encoder graph -> latent -> quantizer -> entropy coder -> .sdc bytes, and back."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from . import effort as effort_levels
from . import images, methods, quantizer, ratecontrol
from .container import SdcFile
from .errors import SdliteError
from .inference import Graph, resolve_device
from .lockstep import run_segments, spill_bytes, spill_folder
from .manifest import FP32, Manifest, Segmented, load_manifest, verified_graph_bytes
from .manifest import Graph as GraphEntry  # a graph as the manifest describes it, not its session
from .models import find_model
from .palette import PaletteModel
from .precision import AUTO, check_precision, choose_graph
from .predictive import PredictiveModel
from .tiling import (DEFAULT_OVERLAP, MemoryModel, Tile, Tiling, blend, choose_tiling, cut, in_step_where_it_fits,
                     run_each)

DEFAULT_QUALITY = 50
# The most pixels an image or a file's header may have (4096 x 4096), checked before anything is
# allocated for them. A .sdc file of a few bytes can legitimately hold a large flat picture, so this
# limit is what keeps a hostile one from filling the memory or the hours: tiling bounds the networks'
# memory (max_memory), but the picture's own buffers and the time still grow with its pixels.
DEFAULT_MAX_PIXELS = 1 << 24
# What one run of a graph and the picture's buffers beside it may take (the process's peak RSS, the
# run's as measured at export) before the image is cut into tiles.
DEFAULT_MAX_MEMORY = int(2.5 * 2**30)
# Held beside a network run, per pixel: the float32 picture going in or the float32 result being
# blended (12 bytes), and the 8-bit image it comes from or goes to (3, rounded up).
PICTURE_BYTES_PER_PIXEL = 16
# The gradient graph keeps the forward pass's activations and makes their gradients: about 3x the
# decoder's peak (TAEF2, measured: 1.40 GB against 0.48 GB at 64x64 latent cells).
GRADIENT_MEMORY_FACTOR = 3


def read_sdc(source: bytes | str | os.PathLike) -> bytes:
    """The bytes of .sdc data given as bytes or as a path (bytes(Path) would be the path's own text)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise SdliteError(f"cannot read {source}: {exc.strerror or exc}") from None
    return bytes(source)


class Codec:
    """One model's encoder and decoder, loaded once and reused for every image; safe to share between threads.

    `precision` picks the graphs' variant (see precision.py), `max_memory` the bytes one graph run
    may take before images are cut into tiles, `tile` forces tiles of that many latent cells a side,
    `max_pixels` is the largest picture accepted, `threads` onnxruntime's intra-op threads (None: the
    cores available); the files written do not depend on the threads. `spill`: tiles in step whose
    tensors do not fit `max_memory` hold them in files (see lockstep.py) rather than run alone, each
    normalised with its own statistics: the picture of the whole run, several times slower.
    """

    def __init__(self, folder: Path, manifest: Manifest, device: str = "cpu", precision: str = AUTO,
                 max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, spill: bool = False):
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
        self.max_pixels = max_pixels
        self.spill = spill
        self._choices: dict[str, tuple[str, GraphEntry, MemoryModel | None, Segmented | None]] = {}
        self._graphs: dict[str, Graph] = {}
        self._segments: dict[str, list[Graph]] = {}
        self._lock = threading.RLock()  # _graph asks _chosen while it holds it

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "cpu", latent_space: bytes | None = None,
             precision: str = AUTO, max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None,
             threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, spill: bool = False) -> Codec:
        """A codec for a model folder, a model name under the models directory, or the only one installed
        (among several, the one whose latent space id is `latent_space`, when given)."""
        folder = find_model(model, latent_space)
        return cls(folder, load_manifest(folder), device, precision, max_memory, tile, threads, max_pixels, spill)

    def copy(self, **changes) -> Codec:
        """A codec with these settings but `changes`, which makes its own sessions (for another process)."""
        settings = dict(device=self.device, precision=self.precision, max_memory=self.max_memory, tile=self.tile,
                        threads=self.threads, max_pixels=self.max_pixels, spill=self.spill)
        return Codec(self.folder, self.manifest, **{**settings, **changes})

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

    @property
    def decoder_gradient(self) -> Graph:
        return self._graph("decoder_vjp")

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

    def encode(self, image: images.ImageSource, quality: float = DEFAULT_QUALITY, method: str = methods.DEFAULT_METHOD,
               size: int | None = None, bpp: float | None = None, effort: int = 0,
               progress: effort_levels.Progress | None = None) -> bytes:
        """The .sdc bytes of an image (a PIL image, a path, or an image file's bytes), at a quality in
        [0, 100], or as the largest file within `size` bytes or `bpp` bits per pixel.

        `effort` 0 is the encoder's single pass; each level above runs more optimisation steps on the
        latent through the decoder (slower, better picture for about the same size). `progress` is
        called with (steps done, steps in all) as they go.
        """
        coder = methods.by_name(method)
        quantizer.step_for_quality(quality)  # refuses a bad quality before any work
        iterations = effort_levels.steps_for_effort(effort)
        picture = images.open_image(image, self.max_pixels)
        width, height = picture.size
        pixels = images.to_array(picture, self.manifest.downsampling_factor)
        latent = self.run_encoder(pixels)[0]
        if bpp is not None:
            size = int(bpp * width * height / 8)
        if iterations:
            if size is not None:  # the search runs at the quality that rate control picks for effort 0
                quality = self._quality_within(latent, width, height, coder, size)
            latent = self.refine(latent, pixels, quality, coder, iterations, progress)
        if size is None:
            return self.pack(latent, width, height, quality, coder)
        return ratecontrol.largest_within(lambda q: self.pack(latent, width, height, q, coder), size)

    def encode_latent(self, picture) -> np.ndarray:
        """The encoder's latent (C, H, W) of an RGB image."""
        return self.run_encoder(images.to_array(picture, self.manifest.downsampling_factor))[0]

    def _quality_within(self, latent: np.ndarray, width: int, height: int, coder, size: int) -> float:
        qualities = {}

        def pack_at(quality: float) -> bytes:
            data = self.pack(latent, width, height, quality, coder)
            qualities[data] = quality
            return data

        return qualities[ratecontrol.largest_within(pack_at, size)]

    def refine(self, latent: np.ndarray, pixels: np.ndarray, quality: float, coder, iterations: int,
               progress: effort_levels.Progress | None = None) -> np.ndarray:
        """A latent that, quantized at `quality` by `coder`, decodes closer to `pixels` than the encoder's
        for about the same size. A large picture is searched tile by tile, so the gradient graph's memory
        stays bounded; each tile keeps the cells nearer its centre than its neighbours'."""
        if coder is PaletteModel:
            raise SdliteError("--effort needs a method with quantizer steps (uniform or predictive), not palette")
        tiling = self.tiling("decoder_vjp", *latent.shape[1:])
        if tiling is None:
            return self._refine_region(latent, pixels, quality, coder, iterations, progress)
        factor = self.manifest.downsampling_factor
        tiles = cut(*latent.shape[1:], tiling)
        refined = latent.copy()
        for number, tile in enumerate(tiles):
            def tile_progress(done: int, total: int, before: int = number * iterations) -> None:
                if progress is not None:
                    progress(before + done, len(tiles) * iterations)

            found = self._refine_region(tile.of(latent, 1), tile.of(pixels, factor), quality, coder, iterations,
                                        tile_progress)
            top, bottom, left, right = tile.owned
            tile.of(refined, 1)[:, top:bottom, left:right] = found[:, top:bottom, left:right]
        return refined

    def _refine_region(self, latent: np.ndarray, pixels: np.ndarray, quality: float, coder, iterations: int,
                       progress: effort_levels.Progress | None) -> np.ndarray:
        """The search over one latent and the pixels it covers: its best, or the encoder's own latent
        when that is better."""
        height, width = pixels.shape[2:]
        step = quantizer.step_for_quality(quality)
        step_codes = quantizer.step_codes(self.manifest.channel_sensitivity, latent.shape[0])
        # the uniform method ignores the per-channel step codes
        codes = step_codes if coder is PredictiveModel else np.zeros_like(step_codes)

        def quantize(candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            model, levels = coder.quantize(candidate, step, step_codes)
            return model.dequantize(levels, step), levels

        search = effort_levels.LatentSearch(self.decoder_gradient, pixels, quantize,
                                            quantizer.channel_steps(step, codes), width * height)
        found = search.run(latent, iterations, progress)

        # Both coded for real (an entropy pass, no network): effort never does worse than effort 0 on the
        # objective it optimises, whatever the rate estimate's error.
        def objective(candidate: tuple[np.ndarray, float]) -> float:
            coded = self.pack(candidate[0], width, height, quality, coder)
            return candidate[1] + found.rate_weight * 8 * len(coded) / (width * height)

        return min([(found.latent, found.distortion), (latent, found.start_distortion)], key=objective)[0]

    def pack(self, latent: np.ndarray, width: int, height: int, quality: float, coder=None) -> bytes:
        """The .sdc bytes of a latent: quantized at `quality` and entropy-coded by one method."""
        coder = coder or methods.by_name(methods.DEFAULT_METHOD)
        step_codes = quantizer.step_codes(self.manifest.channel_sensitivity, latent.shape[0])
        model, symbols, step = methods.quantize(coder, latent, quality, step_codes)
        return SdcFile(
            latent_space_id=self.manifest.latent_space_id,
            width=width,
            height=height,
            latent_shape=latent.shape,
            step=float(step),
            quality=int(quality),
            model_params=model.to_bytes(),
            payload=model.compress(symbols),
            method=coder.method_id,
        ).to_bytes()

    def decode(self, data: bytes | str | os.PathLike) -> Image.Image:
        """The image stored in .sdc bytes, or in the .sdc file at a path, at its original size."""
        sdc = SdcFile.from_bytes(read_sdc(data))
        latent = self.decode_latent(sdc)
        return images.from_array(self.run_decoder(latent[None]), sdc.width, sdc.height)

    def decode_latent(self, data: bytes | str | os.PathLike | SdcFile) -> np.ndarray:
        """The dequantized latent (channels, height, width) stored in .sdc bytes. It is computed from
        integers and one float32 multiply, without the neural network, so it is the same on every
        machine, provider and thread count."""
        sdc = data if isinstance(data, SdcFile) else SdcFile.from_bytes(read_sdc(data))
        self.check_compatible(sdc)
        model = methods.METHODS[sdc.method].from_bytes(sdc.model_params, sdc.latent_shape)
        levels = model.decompress(sdc.payload, sdc.latent_shape)
        with np.errstate(over="ignore", invalid="ignore"):  # a forged step: refused just below
            latent = model.dequantize(levels, sdc.step)
        if not np.isfinite(latent).all():
            raise SdliteError(f"corrupt .sdc file: the quantizer step {sdc.step:g} overflows the latent")
        return latent

    def check_compatible(self, sdc: SdcFile) -> None:
        """Refuse a file from another latent space, or one whose sizes do not add up for this model."""
        if sdc.latent_space_id != self.manifest.latent_space_id:
            raise SdliteError(
                f"this file was made for another latent space (id {sdc.latent_space_id.hex()}); "
                f"model {self.manifest.name} decodes {self.manifest.latent_space} (id {self.manifest.latent_space_id.hex()})"
            )
        if sdc.width * sdc.height > self.max_pixels:
            raise SdliteError(f"the file's image of {sdc.width}x{sdc.height} pixels is above the limit of "
                              f"{self.max_pixels} pixels (raise it with --max-pixels)")
        factor = self.manifest.downsampling_factor
        expected = (self.manifest.latent_channels, -(-sdc.height // factor), -(-sdc.width // factor))
        if tuple(sdc.latent_shape) != expected:
            raise SdliteError(
                f"corrupt .sdc file: latent shape {sdc.latent_shape} does not fit a {sdc.width}x{sdc.height} image "
                f"(expected {expected})"
            )
