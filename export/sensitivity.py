"""How much each latent channel matters to the decoded picture, measured once at export time.

A channel's sensitivity is the mean squared change of the decoded pixels per unit of squared noise
added to that channel alone, around the latents of a few calibration pictures. The runtime's
quantizer gives each channel a step proportional to 1/sqrt(sensitivity): equal distortion per bit
in every channel. Without photos the calibration pictures are "dead leaves" (random overlapping
discs), whose edges and size statistics are close to those of natural images, so the sensitivities
they give follow those of photos closely.
"""

from __future__ import annotations

import numpy as np
import torch

from sdlite.errors import SdliteError

from .calibration import center_crop

# About the quantization error at the rates that matter: small enough to stay near-linear.
NOISE = 0.25
CALIBRATION_SIDE = 128
CALIBRATION_PICTURES = 3


def dead_leaves(side: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB picture in [0, 1] (HWC): discs of random colour and size, nearer ones hiding farther ones."""
    picture = np.zeros((side, side, 3), np.float32)
    covered = np.zeros((side, side), bool)
    y, x = np.mgrid[0:side, 0:side]
    for _ in range(2000):
        radius = side / 2 * rng.uniform(0.02, 1.0) ** 2  # many small discs, few large ones
        centre_y, centre_x = rng.uniform(0, side, 2)
        disc = ((y - centre_y) ** 2 + (x - centre_x) ** 2 < radius**2) & ~covered
        shading = 1 + 0.15 * np.sin(x[disc] / rng.uniform(2, 20) + rng.uniform(0, 6))
        picture[disc] = rng.uniform(0, 1, 3) * shading[:, None]
        covered |= disc
        if covered.all():
            break
    picture += rng.normal(0, 0.02, picture.shape)
    return np.clip(picture, 0, 1)


def calibration_pictures(photos: list[np.ndarray] | None, factor: int) -> list[torch.Tensor]:
    """NCHW tensors: centre crops of the calibration photos, or dead-leaves pictures."""
    if photos is None:
        rng = np.random.default_rng(0)
        arrays = [dead_leaves(CALIBRATION_SIDE, rng) for _ in range(CALIBRATION_PICTURES)]
        return [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)[None])) for a in arrays]
    return [torch.from_numpy(center_crop(photo, min(*photo.shape[2:], 2 * CALIBRATION_SIDE) // factor * factor))
            for photo in photos]


@torch.no_grad()
def channel_sensitivity(encoder: torch.nn.Module, decoder: torch.nn.Module, pictures: list[torch.Tensor],
                        channels: int) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(channels, dtype=torch.float64)
    for picture in pictures:
        latent = encoder(picture)
        reference = decoder(latent)
        for channel in range(channels):
            noisy = latent.clone()
            noisy[:, channel] += NOISE * torch.randn(noisy[:, channel].shape, generator=generator)
            total[channel] += torch.mean((decoder(noisy) - reference).double() ** 2) / NOISE**2
    if not torch.isfinite(total).all() or not total.max() > 0:
        raise SdliteError("the decoder does not respond to its latent: cannot measure channel sensitivities")
    # A channel the decoder ignores gets the coarsest step the quantizer allows, not an infinite one.
    return (total.clamp(min=1e-6 * float(total.max())) / len(pictures)).tolist()
