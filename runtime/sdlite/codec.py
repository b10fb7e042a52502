"""The codec: image -> encoder graph -> latent -> quantizer -> entropy coder -> .sdc bytes, and back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import images, methods, quantizer, ratecontrol
from .container import SdcFile
from .errors import SdliteError
from .inference import Graph
from .manifest import Manifest, load_manifest, verified_graph_path
from .models import find_model

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

    def _graph(self, graph) -> Graph:
        return Graph(verified_graph_path(self.folder, graph), self.device, graph.input, graph.output)

    def encode(self, image: images.ImageSource, quality: float = DEFAULT_QUALITY, method: str = methods.DEFAULT_METHOD,
               size: int | None = None, bpp: float | None = None) -> bytes:
        """The .sdc bytes of an image (a PIL image, a path, or an image file's bytes), at a quality in
        [0, 100], or as the largest file within `size` bytes or `bpp` bits per pixel."""
        coder = methods.by_name(method)
        quantizer.step_for_quality(quality)  # refuses a bad quality before any work
        picture = images.open_image(image)
        width, height = picture.size
        if width * height > MAX_PIXELS:
            raise SdliteError(f"image of {width}x{height} pixels is larger than the limit of {MAX_PIXELS} pixels")
        latent = self.encode_latent(picture)
        if bpp is not None:
            size = int(bpp * width * height / 8)
        if size is None:
            return self.pack(latent, width, height, quality, coder)
        return ratecontrol.largest_within(lambda q: self.pack(latent, width, height, q, coder), size)

    def encode_latent(self, picture) -> np.ndarray:
        """The encoder's latent (C, H, W) of an RGB image."""
        return self.encoder(images.to_array(picture, self.manifest.downsampling_factor))[0]

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
