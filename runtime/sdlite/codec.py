"""The codec: image -> encoder graph -> latent -> quantizer -> entropy coder -> .sdc bytes, and back."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from . import effort as effort_levels
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

    def encode(self, image: images.ImageSource, quality: int = DEFAULT_QUALITY, effort: int = 0,
               progress: effort_levels.Progress | None = None) -> bytes:
        """The .sdc bytes of an image (a PIL image, a path, or an image file's bytes).

        `effort` 0 is the encoder's single pass; each level above runs more optimisation steps on the
        latent through the decoder (slower, better picture for about the same size). `progress` is
        called with (steps done, steps in all) as they go.
        """
        step = quantizer.step_for_quality(quality)
        steps = effort_levels.steps_for_effort(effort)
        picture = images.open_image(image)
        width, height = picture.size
        if width * height > MAX_PIXELS:
            raise SdliteError(f"image of {width}x{height} pixels is larger than the limit of {MAX_PIXELS} pixels")
        pixels = images.to_array(picture, self.manifest.downsampling_factor)
        latent = self.encoder(pixels)[0]
        if not steps:
            return self._file(quantizer.quantize(latent, step), width, height, step, quality)
        found = effort_levels.LatentSearch(self.decoder_gradient, pixels, step, width * height).run(latent, steps, progress)
        # Both coded for real (an entropy pass, no network): effort never does worse than effort 0 on the
        # objective it optimises, whatever the rate estimate's error.
        files = [(self._file(levels, width, height, step, quality), distortion) for levels, distortion in
                 ((found.levels, found.distortion), (found.start_levels, found.start_distortion))]
        return min(files, key=lambda f: f[1] + found.rate_weight * 8 * len(f[0]) / (width * height))[0]

    def _file(self, levels, width: int, height: int, step, quality: int) -> bytes:
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
