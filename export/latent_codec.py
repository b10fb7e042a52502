"""A learned codec of a frozen VAE's latent: analysis and synthesis transforms with a mean-scale
hyperprior (Minnen et al. 2018 without the autoregressive context), in the style of CompressAI.

The VAE latent (C channels at 1/8 of the picture) is analysed into y (M channels at 1/16), whose
hyperprior z (Z channels at 1/64) is coded first; the hyper-synthesis predicts every element of y's
mean and scale from z. Rate is variable from one model through gain vectors (Cui et al. 2021): y is
multiplied by one of `levels` learned gains before it is rounded and by the matching inverse gain
after, and gains between two levels are interpolated geometrically. The hyper-synthesis is the part
that decides probabilities, so its layers are plain convolutions and ReLUs that integer_network.py
turns into exact integer arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

from .entropy_models import FactorizedDensity, gaussian_likelihood


def conv(n_in: int, n_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=kernel // 2)


class SimplifiedGDN(nn.Module):
    """x / (beta + gamma |x|) across channels (Johnston et al. 2019): GDN's gain at a fraction of its cost;
    `inverse` multiplies instead, for the synthesis."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels).view(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = nn.functional.conv2d(x.abs(), self.gamma.abs(), self.beta.abs() + 1e-6)
        return x * norm if self.inverse else x / norm


class Upsample(nn.Sequential):
    """A 3x3 convolution to four times the channels, rearranged to twice the sides (sub-pixel)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__(conv(n_in, 4 * n_out), nn.PixelShuffle(2))


class Shortcut(nn.Module):
    """`body` plus a linear map between the latent and the code through a sub-pixel rearrangement
    (2x2 cells <-> 4x the channels), started as the identity where the channel counts allow: at high
    rates the code then carries the latent itself from the first step, and the layers learn the rest."""

    def __init__(self, body: nn.Sequential, n_in: int, n_out: int, down: bool):
        super().__init__()
        self.body, self.down = body, down
        self.linear = nn.Conv2d(4 * n_in if down else n_in, n_out if down else 4 * n_out, 1, bias=False)
        nn.init.zeros_(self.linear.weight)
        with torch.no_grad():
            diagonal = min(self.linear.weight.shape[:2])
            self.linear.weight[:diagonal, :diagonal, 0, 0] = torch.eye(diagonal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:  # pixel_unshuffle then the 1x1 map, written as the 2x2 stride-2 convolution it is
            weight = self.linear.weight.view(self.linear.weight.shape[0], -1, 2, 2)
            return self.body(x) + nn.functional.conv2d(x, weight, stride=2)
        return self.body(x) + nn.functional.pixel_shuffle(self.linear(x), 2)


def Analysis(latent_channels: int, width: int, code_channels: int) -> Shortcut:
    return Shortcut(nn.Sequential(
        conv(latent_channels, width), SimplifiedGDN(width),
        conv(width, width, stride=2), SimplifiedGDN(width),
        conv(width, code_channels),
    ), latent_channels, code_channels, down=True)


def Synthesis(code_channels: int, width: int, latent_width: int, latent_channels: int) -> Shortcut:
    return Shortcut(nn.Sequential(
        conv(code_channels, width), SimplifiedGDN(width, inverse=True),
        Upsample(width, latent_width), SimplifiedGDN(latent_width, inverse=True),
        conv(latent_width, latent_width), nn.ReLU(),
        conv(latent_width, latent_channels),
    ), code_channels, latent_channels, down=False)


def HyperAnalysis(code_channels: int, width: int, hyper_channels: int) -> nn.Sequential:
    return nn.Sequential(
        conv(code_channels, width), nn.ReLU(),
        conv(width, width, stride=2), nn.ReLU(),
        conv(width, hyper_channels, stride=2),
    )


def HyperSynthesis(hyper_channels: int, width: int, code_channels: int) -> nn.Sequential:
    """z -> (mean, log scale) of every element of y. Only Conv2d, ReLU and PixelShuffle: the layers that
    integer_network.py knows."""
    return nn.Sequential(
        conv(hyper_channels, width), nn.ReLU(),
        Upsample(width, width), nn.ReLU(),
        Upsample(width, width), nn.ReLU(),
        conv(width, 2 * code_channels, 1),
    )


def round_straight_through(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class LatentCodec(nn.Module):
    def __init__(self, latent_channels: int, width: int = 96, code_channels: int = 128, hyper_channels: int = 64,
                 latent_width: int = 64, levels: int = 6):
        super().__init__()
        self.shape = dict(latent_channels=latent_channels, width=width, code_channels=code_channels,
                          hyper_channels=hyper_channels, latent_width=latent_width, levels=levels)
        self.analysis = Analysis(latent_channels, width, code_channels)
        self.synthesis = Synthesis(code_channels, width, latent_width, latent_channels)
        self.hyper_analysis = HyperAnalysis(code_channels, width, hyper_channels)
        self.hyper_synthesis = HyperSynthesis(hyper_channels, width, code_channels)
        self.hyper_prior = FactorizedDensity(hyper_channels)
        # Level 0 is the coarsest; gains start an octave of step apart per level.
        spread = torch.linspace(-(levels - 1) / 2, (levels - 1) / 2, levels)
        self.log_gain = nn.Parameter(spread[:, None].repeat(1, code_channels) * 0.7)
        self.log_inverse_gain = nn.Parameter(-self.log_gain.detach().clone())

    def gains(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, inverse gain), N x M x 1 x 1, at fractional levels in [0, levels - 1]."""
        low = level.floor().clamp(max=self.log_gain.shape[0] - 2).long()
        fraction = (level - low)[:, None]
        def mix(table: torch.Tensor) -> torch.Tensor:
            return torch.exp(table[low] * (1 - fraction) + table[low + 1] * fraction)[:, :, None, None]
        return mix(self.log_gain), mix(self.log_inverse_gain)

    def mean_scale(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.hyper_synthesis(z_hat).chunk(2, dim=1)
        return mean, log_scale

    def forward(self, latent: torch.Tensor, level: torch.Tensor) -> dict[str, torch.Tensor]:
        gain, inverse_gain = self.gains(level)
        y = self.analysis(latent) * gain
        z = self.hyper_analysis(y)
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        z_bits = -torch.log2(self.hyper_prior.likelihood(z_noisy)).sum(dim=(1, 2, 3))
        mean, log_scale = self.mean_scale(round_straight_through(z))
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        y_bits = -torch.log2(gaussian_likelihood(y_noisy, mean, log_scale)).sum(dim=(1, 2, 3))
        y_hat = round_straight_through(y - mean) + mean
        return {"latent": self.synthesis(y_hat * inverse_gain), "bits": y_bits + z_bits}
