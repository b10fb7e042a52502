"""The two graphs the runtime runs, with pre- and post-processing inside, exported to ONNX.

Every source model is reduced to a raw encoder (image in [0, 1] -> latent) and a raw decoder (latent ->
image in about [0, 1]); these wrappers add the latent's shift and scale, so the runtime sees latents of
about unit variance, and clamp the decoded image. Sides are dynamic.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

ENCODER_IO = ("image", "latent")
DECODER_IO = ("latent", "image")


class EncoderGraph(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, scale: float, shift: float):
        super().__init__()
        self.encoder, self.scale, self.shift = encoder, scale, shift

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.encoder(image) - self.shift) * self.scale


class DecoderGraph(torch.nn.Module):
    def __init__(self, decoder: torch.nn.Module, scale: float, shift: float):
        super().__init__()
        self.decoder, self.scale, self.shift = decoder, scale, shift

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent / self.scale + self.shift).clamp(0.0, 1.0)


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
