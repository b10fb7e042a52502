"""The trained hyper-synthesis turned into sdlite's exact integer network (sdlite.methods.integer_network).

Weights become int8 with one scale per output channel; each ReLU's output gets one scale for its layer,
set so that the largest activation seen on calibration inputs, with room to spare, fills the 15-bit
range; the bias goes into the sum's units and the rescaling into a multiplier and a shift. The last
layer writes the means in units of 1/MEAN_UNITS and the log scales in units of 1/LOG_SCALE_UNITS.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sdlite.methods.integer_network import ACTIVATION_LIMIT, IntegerLayer, IntegerNetwork
from sdlite.methods.learned import LOG_SCALE_UNITS, MEAN_UNITS

HEADROOM = 2.0
MULTIPLIER_BITS = 19


def convolutions(hyper_synthesis: nn.Sequential) -> list[tuple[nn.Conv2d, bool, bool]]:
    """(convolution, followed by a ReLU, followed by a sub-pixel rearrangement) in order."""
    layers = []
    for module in hyper_synthesis:
        if isinstance(module, nn.Conv2d):
            layers.append([module, False, False])
        elif isinstance(module, nn.Sequential):  # Upsample: a convolution, then PixelShuffle(2)
            layers.append([module[0], False, True])
        elif isinstance(module, nn.ReLU):
            layers[-1][1] = True
        else:
            raise TypeError(f"the integer network has no {type(module).__name__}")
    return [tuple(layer) for layer in layers]


@torch.no_grad()
def activation_ranges(hyper_synthesis: nn.Sequential, inputs: list[torch.Tensor]) -> list[float]:
    """The largest output of each ReLU layer over the calibration inputs."""
    layers = convolutions(hyper_synthesis)
    largest = [0.0] * len(layers)
    for z in inputs:
        x = z
        for number, (convolution, relu, upsample) in enumerate(layers):
            x = convolution(x)
            if upsample:
                x = nn.functional.pixel_shuffle(x, 2)
            if relu:
                x = torch.relu(x)
                largest[number] = max(largest[number], float(x.max()))
    return largest


def integer_network(hyper_synthesis: nn.Sequential, ranges: list[float], code_channels: int) -> IntegerNetwork:
    layers = []
    input_scale = 1.0  # z is coded as integers
    for (convolution, relu, upsample), largest in zip(convolutions(hyper_synthesis), ranges):
        weight = convolution.weight.detach().double().numpy()
        bias = convolution.bias.detach().double().numpy()
        weight_scale = np.maximum(np.abs(weight).reshape(len(weight), -1).max(axis=1), 1e-12) / 127
        if relu:
            output_scale = np.full(len(weight), max(largest, 1e-6) * HEADROOM / ACTIVATION_LIMIT)
        else:  # means first, then log scales
            output_scale = np.concatenate([np.full(code_channels, 1 / MEAN_UNITS),
                                           np.full(code_channels, 1 / LOG_SCALE_UNITS)])
        sum_scale = weight_scale * input_scale
        ratio = sum_scale / output_scale
        shift = min(40, max(1, math.floor(math.log2((1 << MULTIPLIER_BITS) / ratio.max()))))
        layers.append(IntegerLayer(
            weight=np.rint(weight / weight_scale[:, None, None, None]).astype(np.int64),
            bias=np.rint(bias / sum_scale).astype(np.int64),
            multiplier=np.rint(ratio * 2.0**shift).astype(np.int64),
            shift=shift, relu=relu, upsample=upsample))
        input_scale = float(output_scale[0])
    return IntegerNetwork(layers)
