"""The codec: image -> encoder graph -> latent -> quantizer -> entropy coder -> .sdc bytes, and back."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from . import images, quantizer
from .container import SdcFile
from .entropy import AdaptiveCategorical
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

    def encode(self, image: images.ImageSource, quality: int = DEFAULT_QUALITY) -> bytes:
        """The .sdc bytes of an image (a PIL image, a path, or an image file's bytes)."""
        step = quantizer.step_for_quality(quality)
        picture = images.open_image(image)
        width, height = picture.size
        if width * height > MAX_PIXELS:
            raise SdliteError(f"image of {width}x{height} pixels is larger than the limit of {MAX_PIXELS} pixels")
        latent = self.encoder(images.to_array(picture, self.manifest.downsampling_factor))[0]
        levels = quantizer.quantize(latent, step)
        model = AdaptiveCategorical.fit(levels)
        return SdcFile(
            latent_space_id=self.manifest.latent_space_id,
            width=width,
            height=height,
            latent_shape=levels.shape,
            step=float(step),
            quality=quality,
            model_params=model.to_bytes(),
            payload=model.compress(levels),
        ).to_bytes()

    def decode(self, data: bytes) -> Image.Image:
        """The image stored in .sdc bytes, at its original size."""
        sdc = SdcFile.from_bytes(data)
        self.check_compatible(sdc)
        model = AdaptiveCategorical.from_bytes(sdc.model_params, sdc.latent_shape[0])
        levels = model.decompress(sdc.payload, sdc.latent_shape)
        latent = quantizer.dequantize(levels, sdc.step)[None]
        return images.from_array(self.decoder(latent), sdc.width, sdc.height)

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
