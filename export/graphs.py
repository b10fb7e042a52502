"""The two graphs the runtime runs, with pre- and post-processing inside, exported to ONNX.

The encoder takes an image in [0, 1] and gives the posterior mean, shifted and scaled to about unit
variance; the decoder undoes the scaling and gives the image clamped to [0, 1]. Sides are dynamic.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL

ENCODER_IO = ("image", "latent")
DECODER_IO = ("latent", "image")


class EncoderGraph(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(image * 2.0 - 1.0).latent_dist.mean  # the mean: deterministic, no sampling
        return (mean - self.shift) * self.scale


class DecoderGraph(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latent / self.scale + self.shift).sample
        return ((image + 1.0) / 2.0).clamp(0.0, 1.0)


def export_graph(module: torch.nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str]) -> None:
    input_name, output_name = names
    sides = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's own chatter is not the user's business
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes={input_name: sides},  # forward() takes its input by this name
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
