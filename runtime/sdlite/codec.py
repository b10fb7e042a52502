"""The codec: image -> encoder graph -> latent -> coding method -> .sdc bytes, and back."""

from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from . import effort as effort_levels
from . import images, methods, ratecontrol
from .container import SdcFile
from .errors import SdliteError
from .manifest import TIMED_SIDE, Manifest, load_manifest, verified_graph_bytes
from .methods import Coded, Method, ModelParts
from .methods.quantizer import step_for_quality
from .models import find_model
from .networks.precision import AUTO
from .networks.runner import DEFAULT_MAX_MEMORY, Networks

DEFAULT_QUALITY = 50
# The most pixels an image or a file's header may have (4096 x 4096), checked before anything is
# allocated for them. A .sdc file of a few bytes can legitimately hold a large flat picture, so this
# limit is what keeps a hostile one from filling the memory or the hours: tiling bounds the networks'
# memory (max_memory), but the picture's own buffers and the time still grow with its pixels.
DEFAULT_MAX_PIXELS = 1 << 24


def read_sdc(source: bytes | str | os.PathLike) -> bytes:
    """The bytes of .sdc data given as bytes or as a path (bytes(Path) would be the path's own text)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise SdliteError(f"cannot read {source}: {exc.strerror or exc}") from None
    return bytes(source)


class Codec:
    """One model's encoder, decoder and coding methods, loaded once and reused for every image; safe to
    share between threads. `networks` runs the graphs (see networks/runner.py for `precision`,
    `max_memory`, `tile`, `threads` and `spill`); `max_pixels` is the largest picture accepted. The
    files written do not depend on the threads."""

    def __init__(self, folder: Path, manifest: Manifest, device: str = "cpu", precision: str = AUTO,
                 max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, spill: bool = False):
        self.networks = Networks(folder, manifest, device, precision, max_memory, tile, threads, spill)
        self.folder = folder
        self.manifest = manifest
        self.max_pixels = max_pixels
        self._methods: dict[int, Method] = {}
        self._lock = threading.Lock()

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
        n = self.networks
        settings = dict(device=n.device, precision=n.precision, max_memory=n.max_memory, tile=n.tile,
                        threads=n.threads, max_pixels=self.max_pixels, spill=n.spill)
        return Codec(self.folder, self.manifest, **{**settings, **changes})

    def method(self, name: str | None = None, method_id: int | None = None) -> Method:
        """A coding method bound to this model, by name or by the id a file carries (default: the best
        the model has)."""
        cls = methods.by_id(method_id) if method_id is not None else methods.by_name(
            name or methods.DEFAULT_METHOD)
        with self._lock:
            if cls.id not in self._methods:
                if not cls.available_for(self.manifest):
                    raise SdliteError(f"model {self.manifest.name} cannot code with the {cls.name} method "
                                      f"(it has no trained latent codec)")
                parts = ModelParts(self.manifest, self.folder, self.networks.run_method_graph,
                                   lambda entry: verified_graph_bytes(self.folder, entry))
                self._methods[cls.id] = cls(parts)
            return self._methods[cls.id]

    def encode(self, image: images.ImageSource, quality: float = DEFAULT_QUALITY, method: str | None = None,
               size: int | None = None, bpp: float | None = None, effort: int = 0,
               progress: effort_levels.Progress | None = None) -> bytes:
        """The .sdc bytes of an image (a PIL image, a path, or an image file's bytes), at a quality in
        [0, 100], or as the largest file within `size` bytes or `bpp` bits per pixel. `method` is a
        coding method's name (default: the best the model has).

        `effort` 0 is the encoder's single pass; each level above runs more optimisation steps on the
        latent through the decoder (slower, better picture for about the same size). `progress` is
        called with (steps done, steps in all) as they go.
        """
        coder = self.method(method)
        step_for_quality(quality)  # refuses a bad quality before any work
        iterations = effort_levels.steps_for_effort(effort)
        if iterations and not coder.supports_effort:
            raise SdliteError(f"encoder effort above 0 is not available with the {coder.name} method of model "
                              f"{self.manifest.name}")
        picture = images.open_image(image, self.max_pixels)
        width, height = picture.size
        pixels = images.to_array(picture, self.manifest.downsampling_factor)
        latent = self.networks.run_encoder(pixels)[0]
        if bpp is not None:
            size = int(bpp * width * height / 8)
        if not iterations:
            if size is None:
                return self.pack(latent, width, height, quality, coder)
            return ratecontrol.largest_within(lambda q: self.pack(latent, width, height, q, coder), size)
        fallback = None
        if size is not None:  # the search runs at the quality that rate control picks for effort 0
            quality, fallback = self._quality_within(latent, width, height, coder, size)
        search = coder.effort_search(latent, quality)

        def file_of(variable: np.ndarray, width: int = width, height: int = height) -> bytes:
            """The file of a whole variable, or of a tile of a latent (the search's tiles are coded alone)."""
            shape = latent.shape if variable.shape == search.start.shape else variable.shape
            return self._file(search.encode(variable), shape, width, height, quality, coder)

        found = file_of(effort_levels.refine(self.networks, search, pixels, iterations,
                                             lambda v, w, h: len(file_of(v, w, h)), progress))
        return fallback if fallback is not None and len(found) > size else found

    def encode_latent(self, picture) -> np.ndarray:
        """The encoder's latent (C, H, W) of an RGB image."""
        return self.networks.run_encoder(images.to_array(picture, self.manifest.downsampling_factor))[0]

    def _quality_within(self, latent: np.ndarray, width: int, height: int, coder: Method,
                        size: int) -> tuple[float, bytes]:
        """The quality of the largest file within `size` bytes, and that file."""
        qualities = {}

        def pack_at(quality: float) -> bytes:
            data = self.pack(latent, width, height, quality, coder)
            qualities[data] = quality
            return data

        data = ratecontrol.largest_within(pack_at, size)
        return qualities[data], data

    def pack(self, latent: np.ndarray, width: int, height: int, quality: float, coder: Method | None = None) -> bytes:
        """The .sdc bytes of a latent, quantized at `quality` and entropy-coded by one method (default:
        the best the model has)."""
        coder = coder or self.method()
        return self._file(coder.encode(latent, quality), latent.shape, width, height, quality, coder)

    def _file(self, coded: Coded, latent_shape: tuple[int, int, int], width: int, height: int, quality: float,
              coder: Method) -> bytes:
        return SdcFile(latent_space_id=self.manifest.latent_space_id, width=width, height=height,
                       latent_shape=latent_shape, step=coded.step, quality=int(quality),
                       model_params=coded.model_block, payload=coded.payload, method=coder.id).to_bytes()

    def decode_seconds(self, width: int, height: int) -> float:
        """About how long the decoder takes on a picture of this size: its time at export scaled by the
        pixels (inf where the manifest has no time)."""
        seconds = self.networks.export_seconds("decoder")
        return math.inf if seconds is None else seconds * width * height / TIMED_SIDE**2

    def round_trip_psnr(self, image: images.ImageSource, data: bytes) -> float:
        """The PSNR in dB of the picture that `data` decodes to against `image` (RGB, 8 bits): one decode."""
        with warnings.catch_warnings():  # what the encode said about the image (alpha dropped, ...) is said
            warnings.simplefilter("ignore")
            original = images.open_image(image, self.max_pixels)
        return images.psnr(self.decode(data), original)

    def decode(self, data: bytes | str | os.PathLike) -> Image.Image:
        """The image stored in .sdc bytes, or in the .sdc file at a path, at its original size."""
        sdc = SdcFile.from_bytes(read_sdc(data))
        latent = self.decode_latent(sdc)
        return images.from_array(self.networks.run_decoder(latent[None]), sdc.width, sdc.height)

    def decode_latent(self, data: bytes | str | os.PathLike | SdcFile) -> np.ndarray:
        """The dequantized latent (channels, height, width) stored in .sdc bytes or a file. The step methods
        compute it from integers and one float32 multiply, so it is the same on every machine, provider
        and thread count; the learned method's levels are as exact, its synthesis graph is float."""
        sdc = data if isinstance(data, SdcFile) else SdcFile.from_bytes(read_sdc(data))
        self.check_compatible(sdc)
        return self.method(method_id=sdc.method).decode(sdc.model_params, sdc.payload, sdc.latent_shape, sdc.step)

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
