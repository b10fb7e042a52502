"""A small convolutional network in exact integer arithmetic: the learned method's hyper-synthesis,
whose outputs pick every symbol's probability table and so must be the same on every machine.

Each layer: int8 weights, integer activations, an integer sum per output, the bias added in the sum's
units, then `(sum * multiplier + 2^(shift-1)) >> shift` back to the next layer's units (per output
channel), a ReLU where the layer has one, a clamp to ACTIVATION_LIMIT, and, for an upsampling layer,
a sub-pixel rearrangement (torch's PixelShuffle(2)). The sums are computed as binary64 matrix
products: every product and partial sum is an integer below 2^53 (checked at load through the layer's
largest possible sum), so any summation order and any BLAS gives the exact integer.
"""

from __future__ import annotations

import numpy as np

from ..errors import SdliteError

ACTIVATION_LIMIT = (1 << 15) - 1
OUTPUT_LIMIT = 1 << 24
EXACT_BELOW = 1 << 53
LARGEST_INPUT = 1 << 12  # hyper-prior values beyond the escape's reach are refused before the network


class IntegerLayer:
    def __init__(self, weight: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: int, relu: bool,
                 upsample: bool):
        self.weight = np.asarray(weight, np.int64)
        self.bias = np.asarray(bias, np.int64)
        self.multiplier = np.asarray(multiplier, np.int64)
        self.shift, self.relu, self.upsample = int(shift), bool(relu), bool(upsample)
        outputs, _, kernel, kernel_width = self.weight.shape
        if (kernel != kernel_width or kernel % 2 == 0 or self.bias.shape != (outputs,)
                or self.multiplier.shape != (outputs,) or not 1 <= self.shift <= 40
                or np.abs(self.weight).max(initial=0) > 127 or np.abs(self.multiplier).max(initial=0) >= 1 << 20
                or np.abs(self.bias).max(initial=0) >= 1 << 40 or (upsample and outputs % 4)):
            raise SdliteError("the latent codec's integer network has a malformed layer")

    def largest_sum(self, largest_input: int) -> int:
        per_output = np.abs(self.weight).reshape(len(self.weight), -1).sum(axis=1) * largest_input
        return int((per_output + np.abs(self.bias)).max())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: integers, channels x height x width."""
        channels, height, width = x.shape
        kernel = self.weight.shape[2]
        pad = kernel // 2
        padded = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
        columns = np.empty((channels, kernel, kernel, height, width), np.float64)
        for dy in range(kernel):
            for dx in range(kernel):
                columns[:, dy, dx] = padded[:, dy:dy + height, dx:dx + width]
        sums = self.weight.reshape(len(self.weight), -1).astype(np.float64) @ columns.reshape(-1, height * width)
        sums = sums.astype(np.int64) + self.bias[:, None]
        out = (sums * self.multiplier[:, None] + (1 << (self.shift - 1))) >> self.shift
        out = np.clip(out, 0 if self.relu else -OUTPUT_LIMIT, ACTIVATION_LIMIT if self.relu else OUTPUT_LIMIT)
        out = out.reshape(-1, height, width)
        if self.upsample:  # channel 4c + 2i + j goes to (c, 2y + i, 2x + j)
            out = out.reshape(-1, 2, 2, height, width).transpose(0, 3, 1, 4, 2).reshape(-1, 2 * height, 2 * width)
        return out


class IntegerNetwork:
    def __init__(self, layers: list[IntegerLayer]):
        self.layers = layers
        largest = LARGEST_INPUT
        for layer in layers:
            if layer.largest_sum(largest) * (1 << 20) >= 1 << 63 or layer.largest_sum(largest) >= EXACT_BELOW:
                raise SdliteError("the latent codec's integer network could overflow its sums")
            largest = ACTIVATION_LIMIT if layer.relu else OUTPUT_LIMIT
        for before, after in zip(layers, layers[1:]):
            if before.weight.shape[0] // (4 if before.upsample else 1) != after.weight.shape[1]:
                raise SdliteError("the latent codec's integer network has layers that do not fit together")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if np.abs(x).max(initial=0) > LARGEST_INPUT:
            raise SdliteError("corrupt .sdc file: a hyper-prior value is out of range")
        for layer in self.layers:
            x = layer(x)
        return x

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {}
        for number, layer in enumerate(self.layers):
            name = f"{prefix}.{number}"
            arrays[f"{name}.weight"] = layer.weight.astype(np.int8)
            arrays[f"{name}.bias"] = layer.bias
            arrays[f"{name}.multiplier"] = layer.multiplier
            arrays[f"{name}.flags"] = np.array([layer.shift, layer.relu, layer.upsample], np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> IntegerNetwork:
        layers, number = [], 0
        while f"{prefix}.{number}.weight" in arrays:
            name = f"{prefix}.{number}"
            if arrays[f"{name}.weight"].ndim != 4 or arrays[f"{name}.flags"].shape != (3,):
                raise SdliteError("the latent codec's integer network has a malformed layer")
            shift, relu, upsample = (int(v) for v in arrays[f"{name}.flags"])
            layers.append(IntegerLayer(arrays[f"{name}.weight"], arrays[f"{name}.bias"],
                                       arrays[f"{name}.multiplier"], shift, relu, upsample))
            number += 1
        if not layers:
            raise SdliteError("the latent codec has no integer network")
        return cls(layers)
