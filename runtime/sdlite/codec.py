"""The codec: image -> encoder graph -> latent -> quantizer -> entropy coder -> .sdc bytes, and back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import effort as effort_levels
from . import images, methods, quantizer, ratecontrol
from .container import SdcFile
from .errors import SdliteError
from .inference import Graph
from .manifest import Manifest, load_manifest, verified_graph_path
from .models import find_model
from .palette import PaletteModel
from .predictive import PredictiveModel

DEFAULT_QUALITY = 50
MAX_PIXELS = 1 << 28  # what a header may claim before anything is allocated for it


class Codec:
    """One model's encoder and decoder, loaded once and reused for every image."""

    def __init__(self, folder: Path, manifest: Manifest, device: str = "cpu"):
        self.folder = folder
        self.manifest = manifest
        self.device = device
        self._encoder: Graph | None = None
        self._decoder: Graph | None = None
        self._decoder_gradient: Graph | None = None

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str = "cpu",
             latent_space: bytes | None = None) -> Codec:
        """A codec for a model folder, a model name under the models directory, or the only one installed
        (among several, the one whose latent space id is `latent_space`, when given)."""
        folder = find_model(model, latent_space)
        return cls(folder, load_manifest(folder), device)

    @property
    def encoder(self) -> Graph:
        if self._encoder is None:  # made on first use, so decoding never pays for the encoder
            self._encoder = self._graph(self.manifest.encoder)
        return self._encoder

    @property
    def decoder(self) -> Graph:
        if self._decoder is None:
            self._decoder = self._graph(self.manifest.decoder)
        return self._decoder

    @property
    def decoder_gradient(self) -> Graph:
        if self._decoder_gradient is None:
            if self.manifest.decoder_vjp is None:
                raise SdliteError(f"model {self.manifest.name} has no decoder gradient graph (exported by an older "
                                  f"version): re-export it with `python -m export build`, or use effort 0")
            self._decoder_gradient = self._graph(self.manifest.decoder_vjp)
        return self._decoder_gradient

    def _graph(self, graph) -> Graph:
        return Graph(verified_graph_path(self.folder, graph), self.device, graph.input, graph.output)

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
        picture = images.open_image(image)
        width, height = picture.size
        if width * height > MAX_PIXELS:
            raise SdliteError(f"image of {width}x{height} pixels is larger than the limit of {MAX_PIXELS} pixels")
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
        self.check_compatible(sdc)
        latent = self.decode_latent(sdc)
        return images.from_array(self.decoder(latent[None]), sdc.width, sdc.height)

    @staticmethod
    def decode_latent(sdc: SdcFile) -> np.ndarray:
        """The dequantized latent (C, H, W) of a parsed file."""
        model = methods.METHODS[sdc.method].from_bytes(sdc.model_params, sdc.latent_shape)
        return model.dequantize(model.decompress(sdc.payload, sdc.latent_shape), sdc.step)

    def check_compatible(self, sdc: SdcFile) -> None:
        """Refuse a file from another latent space, or one whose sizes do not add up for this model."""
        if sdc.latent_space_id != self.manifest.latent_space_id:
            raise SdliteError(
                f"this file was made for another latent space (id {sdc.latent_space_id.hex()}); "
                f"model {self.manifest.name} decodes {self.manifest.latent_space} (id {self.manifest.latent_space_id.hex()})"
            )
        if sdc.width * sdc.height > MAX_PIXELS:
            raise SdliteError(f"corrupt .sdc file: {sdc.width}x{sdc.height} pixels is above the limit of {MAX_PIXELS}")
        factor = self.manifest.downsampling_factor
        expected = (self.manifest.latent_channels, -(-sdc.height // factor), -(-sdc.width // factor))
        if tuple(sdc.latent_shape) != expected:
            raise SdliteError(
                f"corrupt .sdc file: latent shape {sdc.latent_shape} does not fit a {sdc.width}x{sdc.height} image "
                f"(expected {expected})"
            )
