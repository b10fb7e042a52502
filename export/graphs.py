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

import onnx
import torch

from .subpixel import fold_upsampling

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


def export_graph(module: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], path: Path,
                 names: tuple[str | tuple[str, ...], str | tuple[str, ...]]) -> None:
    """Export with every input's sides dynamic; `names` gives the input and output name(s). Nearest 2x
    upsamplings followed by a 3x3 convolution are then computed at the lower resolution (subpixel.py)."""
    examples = example if isinstance(example, tuple) else (example,)
    input_names, output_names = (list(n) if isinstance(n, tuple) else [n] for n in names)
    sides = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's own chatter is not the user's business
        program = torch.onnx.export(
            module,
            examples,
            input_names=input_names,
            output_names=output_names,
            # positional, because a traced graph's arguments are not named like forward()'s
            dynamic_shapes=[sides] * len(examples),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    if fold_upsampling(model):
        onnx.save(model, str(path))
