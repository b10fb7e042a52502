"""The codec: image -> encoder graph -> latent -> quantizer -> entropy coder -> .sdc bytes, and back."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from . import images, methods, quantizer, ratecontrol
from .container import SdcFile
from .errors import SdliteError
from .inference import Graph, resolve_device
from .manifest import Manifest, load_manifest, verified_graph_bytes
from .models import find_model
from .precision import AUTO, check_precision, choose_graph
from .tiling import DEFAULT_OVERLAP, MemoryModel, Tiling, choose_tiling, run_tiled

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


class Codec:
    """One model's encoder and decoder, loaded once and reused for every image; safe to share between threads.

    `precision` picks the graphs' variant (see precision.py), `max_memory` the bytes one graph run
    may take before images are cut into tiles, `tile` forces tiles of that many latent cells a side,
    `max_pixels` is the largest picture accepted, `threads` onnxruntime's intra-op threads (None: the
    cores available); the files written do not depend on the threads.
    """

    def __init__(self, folder: Path, manifest: Manifest, device: str = "cpu", precision: str = AUTO,
                 max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
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
        self._graphs: dict[str, tuple[str, Graph, MemoryModel | None]] = {}
        self._graphs_lock = threading.Lock()

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "cpu", latent_space: bytes | None = None,
             precision: str = AUTO, max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None,
             threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Codec:
        """A codec for a model folder, a model name under the models directory, or the only one installed
        (among several, the one whose latent space id is `latent_space`, when given)."""
        folder = find_model(model, latent_space)
        return cls(folder, load_manifest(folder), device, precision, max_memory, tile, threads, max_pixels)

    def copy(self, **changes) -> Codec:
        """A codec with these settings but `changes`, which makes its own sessions (for another process)."""
        settings = dict(device=self.device, precision=self.precision, max_memory=self.max_memory, tile=self.tile,
                        threads=self.threads, max_pixels=self.max_pixels)
        return Codec(self.folder, self.manifest, **{**settings, **changes})

    def _loaded(self, role: str) -> tuple[str, Graph, MemoryModel | None]:
        with self._graphs_lock:  # two threads' first calls must not both load the graph
            if role not in self._graphs:  # made on first use, so decoding never pays for the encoder
                precision, entry = choose_graph(self.manifest, role, self.precision, resolve_device(self.device))
                graph = Graph(verified_graph_bytes(self.folder, entry), self.device, entry.input, entry.output,
                              sha256=entry.sha256, threads=self.threads, label=f"{self.folder / entry.file}")
                self._graphs[role] = precision, graph, MemoryModel(*entry.memory) if entry.memory else None
            return self._graphs[role]

    @property
    def encoder(self) -> Graph:
        return self._loaded("encoder")[1]

    @property
    def decoder(self) -> Graph:
        return self._loaded("decoder")[1]

    def precision_of(self, role: str) -> str:
        """The precision that runs as the encoder or decoder (auto resolved)."""
        return self._loaded(role)[0]

    def tiling(self, role: str, latent_height: int, latent_width: int) -> Tiling | None:
        """How the encoder or decoder cuts a latent of this size into tiles; None: in one piece."""
        if self.tile is not None:
            fits = max(latent_height, latent_width) <= self.tile
            return None if fits else Tiling(self.tile, min(DEFAULT_OVERLAP, self.tile // 4))
        memory = self._loaded(role)[2]
        if memory is None:
            return None
        pixels = latent_height * latent_width * self.manifest.downsampling_factor**2
        return choose_tiling(latent_height, latent_width, memory, self.max_memory - PICTURE_BYTES_PER_PIXEL * pixels)

    def run_encoder(self, pixels: np.ndarray) -> np.ndarray:
        """The latent (NCHW) of padded pixels (NCHW in [0, 1]), in tiles where it is large."""
        factor = self.manifest.downsampling_factor
        tiling = self.tiling("encoder", pixels.shape[2] // factor, pixels.shape[3] // factor)
        return self.encoder(pixels) if tiling is None else run_tiled(self.encoder, pixels, tiling, factor, 1)

    def run_decoder(self, latent: np.ndarray) -> np.ndarray:
        """The pixels (NCHW in [0, 1]) of a latent (NCHW), in tiles where it is large."""
        tiling = self.tiling("decoder", *latent.shape[2:])
        factor = self.manifest.downsampling_factor
        return self.decoder(latent) if tiling is None else run_tiled(self.decoder, latent, tiling, 1, factor)

    def encode(self, image: images.ImageSource, quality: float = DEFAULT_QUALITY, method: str = methods.DEFAULT_METHOD,
               size: int | None = None, bpp: float | None = None) -> bytes:
        """The .sdc bytes of an image (a PIL image, a path, or an image file's bytes), at a quality in
        [0, 100], or as the largest file within `size` bytes or `bpp` bits per pixel."""
        coder = methods.by_name(method)
        quantizer.step_for_quality(quality)  # refuses a bad quality before any work
        picture = images.open_image(image, self.max_pixels)
        width, height = picture.size
        latent = self.encode_latent(picture)
        if bpp is not None:
            size = int(bpp * width * height / 8)
        if size is None:
            return self.pack(latent, width, height, quality, coder)
        return ratecontrol.largest_within(lambda q: self.pack(latent, width, height, q, coder), size)

    def encode_latent(self, picture) -> np.ndarray:
        """The encoder's latent (C, H, W) of an RGB image."""
        return self.run_encoder(images.to_array(picture, self.manifest.downsampling_factor))[0]

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

    def decode(self, data: bytes) -> Image.Image:
        """The image stored in .sdc bytes, at its original size."""
        sdc = SdcFile.from_bytes(data)
        latent = self.decode_latent(sdc)
        return images.from_array(self.run_decoder(latent[None]), sdc.width, sdc.height)

    def decode_latent(self, data: bytes | SdcFile) -> np.ndarray:
        """The dequantized latent (channels, height, width) stored in .sdc bytes. It is computed from
        integers and one float32 multiply, without the neural network, so it is the same on every
        machine, provider and thread count."""
        sdc = data if isinstance(data, SdcFile) else SdcFile.from_bytes(data)
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
