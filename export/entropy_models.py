"""The entropy models of the latent codec as training sees them (differentiable likelihoods), and their
integer frequency tables as the runtime codes with them (sdlite.methods.tables).

`FactorizedDensity` is Balle et al.'s non-parametric density (CompressAI's EntropyBottleneck): one
learned monotonic cumulative per channel, for the hyperprior z. y is Gaussian given the mean and scale
that the hyper-synthesis predicts; the runtime only ever sees the scale as an index into SCALES.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sdlite.methods.tables import HYPER_RANGE, SCALES, frequencies_from_probabilities, tail

LIKELIHOOD_FLOOR = 1e-9


class _LowerBound(torch.autograd.Function):
    """max(x, bound), whose gradient still flows where it would raise x back above the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp(min=bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def scale_of(log_scale: torch.Tensor) -> torch.Tensor:
    return lower_bound(torch.exp(log_scale), float(SCALES[0])).clamp(max=float(SCALES[-1]))


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2))


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """P(round(y - mean)) under a Gaussian of the given scale, for y with uniform noise in training."""
    scale = scale_of(log_scale)
    centred = (y - mean).abs()  # the tail on the far side of zero is the smaller: fewer cancellations
    upper = _normal_cdf((0.5 - centred) / scale)
    lower = _normal_cdf((-0.5 - centred) / scale)
    return lower_bound(upper - lower, LIKELIHOOD_FLOOR)


class FactorizedDensity(nn.Module):
    """Per channel, a cumulative c(x) = sigmoid(f(x)) with f a small monotonic network (filters 3-3-3)."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        sizes = (1, *filters, 1)
        scale = init_scale ** (1 / (len(sizes) - 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(sizes) - 1):
            init = math.log(math.expm1(1 / scale / sizes[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, sizes[i + 1], sizes[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, sizes[i + 1], 1) - 0.5))
            if i < len(sizes) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, sizes[i + 1], 1)))

    def logits_cumulative(self, x: torch.Tensor) -> torch.Tensor:
        """x: channels x 1 x points -> the cumulative's logits at those points."""
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(nn.functional.softplus(matrix), x) + bias
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """P of the unit interval around each element of z (N x channels x H x W)."""
        points = z.transpose(0, 1).reshape(z.shape[1], 1, -1)
        lower = self.logits_cumulative(points - 0.5)
        upper = self.logits_cumulative(points + 0.5)
        sign = -torch.sign(lower + upper).detach()  # compute on the side of the median where it is precise
        probability = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        probability = probability.reshape(z.shape[1], z.shape[0], *z.shape[2:]).transpose(0, 1)
        return lower_bound(probability, LIKELIHOOD_FLOOR)

    @torch.no_grad()
    def frequency_tables(self) -> np.ndarray:
        """channels x (2 HYPER_RANGE + 2) integer frequencies of z = -HYPER_RANGE .. HYPER_RANGE, then escape."""
        values = torch.arange(-HYPER_RANGE, HYPER_RANGE + 1, dtype=torch.float32)
        channels = self.matrices[0].shape[0]
        upper = torch.sigmoid(self.logits_cumulative(values.repeat(channels, 1, 1) + 0.5))[:, 0]
        lower = torch.sigmoid(self.logits_cumulative(values.repeat(channels, 1, 1) - 0.5))[:, 0]
        inside = (upper - lower).double().clamp(min=0)
        outside = (1 - inside.sum(dim=1, keepdim=True)).clamp(min=0)
        return frequencies_from_probabilities(torch.cat([inside, outside], dim=1).numpy())


def gaussian_frequency_tables() -> list[np.ndarray]:
    """For every scale of SCALES, the integer frequencies of the offsets from the mean within its tail
    range (sdlite.methods.tables.tail), then escape."""
    tables = []
    for scale in SCALES.astype(np.float64):
        reach = tail(len(tables))
        values = torch.arange(-reach, reach + 1, dtype=torch.float64)
        inside = _normal_cdf((values + 0.5) / scale) - _normal_cdf((values - 0.5) / scale)
        outside = (1 - inside.sum()).clamp(min=0)
        tables.append(frequencies_from_probabilities(torch.cat([inside, outside[None]]).numpy()[None])[0])
    return tables
