"""The codec: image -> encoder graph -> latent -> quantizer -> entropy coder -> .sdc bytes, and back."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from . import effort as effort_levels
from . import images, methods, quantizer, ratecontrol
from .container import SdcFile
from .errors import SdliteError
from .inference import Graph
from .manifest import Manifest, load_manifest, verified_graph_bytes
from .models import find_model
from .palette import PaletteModel
from .predictive import PredictiveModel

DEFAULT_QUALITY = 50
# The most pixels an image or a file's header may have (1024 x 1024), checked before anything is
# allocated for them. A .sdc file of a few bytes can legitimately hold a large flat picture, so this
# limit is what keeps a hostile one from filling the memory: the SD 1.x VAE's attention matrix alone
# takes 4 * (pixels / 64)^2 bytes, 1 GB at this limit and 275 GB at 4096 x 4096.
DEFAULT_MAX_PIXELS = 1 << 20


class Codec:
    """One model's encoder and decoder, loaded once and reused for every image; safe to share between threads."""

    def __init__(self, folder: Path, manifest: Manifest, device: str = "cpu",
                 max_pixels: int = DEFAULT_MAX_PIXELS, threads: int | None = None):
        self.folder = folder
        self.manifest = manifest
        self.device = device
        self.max_pixels = max_pixels
        self.threads = threads
        self._graphs: dict[str, Graph] = {}
        self._graphs_lock = threading.Lock()

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "cpu",
             latent_space: bytes | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
             threads: int | None = None) -> Codec:
        """A codec for a model folder, a model name under the models directory, or the only one installed
        (among several, the one whose latent space id is `latent_space`, when given). `threads` sets
        onnxruntime's intra-op threads (None: its default); the files written do not depend on it."""
        folder = find_model(model, latent_space)
        return cls(folder, load_manifest(folder), device, max_pixels, threads)

    @property
    def encoder(self) -> Graph:
        return self._graph("encoder")  # made on first use, so decoding never pays for the encoder

    @property
    def decoder(self) -> Graph:
        return self._graph("decoder")

    @property
    def decoder_gradient(self) -> Graph:
        if self.manifest.decoder_vjp is None:
            raise SdliteError(f"model {self.manifest.name} has no decoder gradient graph (exported by an older "
                              f"version): re-export it with `python -m export build`, or use effort 0")
        return self._graph("decoder_vjp")

    def _graph(self, which: str) -> Graph:
        with self._graphs_lock:  # two threads' first calls must not both load the graph
            if which not in self._graphs:
                graph = getattr(self.manifest, which)
                self._graphs[which] = Graph(verified_graph_bytes(self.folder, graph), self.device, graph.input,
                                            graph.output, self.threads, label=f"{self.folder / graph.file}")
            return self._graphs[which]

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
        latent = self.encoder(pixels)[0]
        if bpp is not None:
            size = int(bpp * width * height / 8)
        if iterations:
            if size is not None:  # the search runs at the quality that rate control picks for effort 0
                quality = self._quality_within(latent, width, height, coder, size)
            latent = self.refine(latent, pixels, width, height, quality, coder, iterations, progress)
        if size is None:
            return self.pack(latent, width, height, quality, coder)
        return ratecontrol.largest_within(lambda q: self.pack(latent, width, height, q, coder), size)

    def encode_latent(self, picture) -> np.ndarray:
        """The encoder's latent (C, H, W) of an RGB image."""
        return self.encoder(images.to_array(picture, self.manifest.downsampling_factor))[0]

    def _quality_within(self, latent: np.ndarray, width: int, height: int, coder, size: int) -> float:
        qualities = {}

        def pack_at(quality: float) -> bytes:
            data = self.pack(latent, width, height, quality, coder)
            qualities[data] = quality
            return data

        return qualities[ratecontrol.largest_within(pack_at, size)]

    def refine(self, latent: np.ndarray, pixels: np.ndarray, width: int, height: int, quality: float, coder,
               iterations: int, progress: effort_levels.Progress | None = None) -> np.ndarray:
        """A latent that, quantized at `quality` by `coder`, decodes closer to `pixels` than the encoder's
        for about the same size: the search's best, or the encoder's own when that is better."""
        if coder is PaletteModel:
            raise SdliteError("--effort needs a method with quantizer steps (uniform or predictive), not palette")
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

    def decode(self, data: bytes) -> Image.Image:
        """The image stored in .sdc bytes, at its original size."""
        sdc = SdcFile.from_bytes(data)
        latent = self.decode_latent(sdc)
        return images.from_array(self.decoder(latent[None]), sdc.width, sdc.height)

    def decode_latent(self, data: bytes | SdcFile) -> np.ndarray:
        """The dequantized latent (channels, height, width) stored in .sdc bytes. It is computed from
        integers and one float32 multiply, without the neural network, so it is the same on every
        machine, provider and thread count."""
        sdc = data if isinstance(data, SdcFile) else SdcFile.from_bytes(data)
        self.check_compatible(sdc)
        model = methods.METHODS[sdc.method].from_bytes(sdc.model_params, sdc.latent_shape)
        levels = model.decompress(sdc.payload, sdc.latent_shape)
        with np.errstate(over="ignore"):  # a forged step: refused just below
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
