"""Tiny AutoEncoders (TAESD, TAEF2, ...) by Ollin Boer Bohan, from their original checkpoints.

Each half is one flat nn.Sequential, so a checkpoint's keys are layer indices; the shapes tell the
variant: the latent channel count, and (FLUX.2) a pooling branch in the lowest-resolution blocks.
Images are in [0, 1] on both sides; latents come out already scaled.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 64


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, pooled: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        # FLUX.2's variant mixes channels through a GroupNorm bottleneck at the lowest resolution.
        self.pool = nn.Sequential(
            nn.Conv2d(n_in, 4 * n_in, 1, bias=False), nn.GroupNorm(4, 4 * n_in), nn.ReLU(),
            nn.Conv2d(4 * n_in, n_in, 1, bias=False),
        ) if pooled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def Encoder(latent_channels: int, pooled: bool) -> nn.Sequential:
    return nn.Sequential(
        conv(3, WIDTH), Block(WIDTH, WIDTH),
        conv(WIDTH, WIDTH, stride=2, bias=False), *(Block(WIDTH, WIDTH) for _ in range(3)),
        conv(WIDTH, WIDTH, stride=2, bias=False), *(Block(WIDTH, WIDTH) for _ in range(3)),
        conv(WIDTH, WIDTH, stride=2, bias=False), *(Block(WIDTH, WIDTH, pooled) for _ in range(3)),
        conv(WIDTH, latent_channels),
    )


def Decoder(latent_channels: int, pooled: bool) -> nn.Sequential:
    return nn.Sequential(
        Clamp(), conv(latent_channels, WIDTH), nn.ReLU(),
        *(Block(WIDTH, WIDTH, pooled) for _ in range(3)), nn.Upsample(scale_factor=2), conv(WIDTH, WIDTH, bias=False),
        *(Block(WIDTH, WIDTH) for _ in range(3)), nn.Upsample(scale_factor=2), conv(WIDTH, WIDTH, bias=False),
        *(Block(WIDTH, WIDTH) for _ in range(3)), nn.Upsample(scale_factor=2), conv(WIDTH, WIDTH, bias=False),
        Block(WIDTH, WIDTH), conv(WIDTH, 3),
    )


DOWNSAMPLING_FACTOR = 8


def latent_channels(encoder_state: dict[str, torch.Tensor]) -> int:
    last = max(int(key.split(".")[0]) for key in encoder_state)
    return encoder_state[f"{last}.weight"].shape[0]


def _pooled(state: dict[str, torch.Tensor]) -> bool:
    return any(".pool." in key for key in state)


def build_encoder(state: dict[str, torch.Tensor]) -> nn.Sequential:
    encoder = Encoder(latent_channels(state), _pooled(state))
    encoder.load_state_dict(state)
    return encoder.eval()


def build_decoder(state: dict[str, torch.Tensor]) -> nn.Sequential:
    decoder = Decoder(state["1.weight"].shape[1], _pooled(state))
    decoder.load_state_dict(state)
    return decoder.eval()
