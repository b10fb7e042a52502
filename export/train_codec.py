"""`python -m export train-codec`: train the latent codec (latent_codec.py) for an exported model.

The VAE stays frozen: its encoder graph (run by sdlite's runtime) turns the photos into latents once,
cached beside the checkpoint, and training sees random crops of them. Distortion is the latent error
weighted per channel by how much the decoder's picture moves for it (measured here on the training
photos through the decoder graph), so that it stands for the decoded picture's squared error. Each
crop is trained at a random rate level, with lambda interpolated like the gains.

Every `CHECKPOINT_EVERY` steps the model, optimiser, step and random state go to checkpoint.pt, and a
run started again with the same folder resumes from there.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from sdlite.codec import Codec
from sdlite.errors import SdliteError
from sdlite.images import to_array

from .build import quiet_libraries
from .latent_codec import LatentCodec
from .latent_codec_export import install_latent_codec

CHECKPOINT_EVERY = 200
LOG_EVERY = 50
HELD_OUT_EVERY = 10  # every tenth photo, by file name, is kept out of training
SENSITIVITY_CROPS = 4
SENSITIVITY_NOISE = 0.25
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def split_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    """(training photos, held-out photos), by a fixed rule on the sorted names."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(photos) < HELD_OUT_EVERY:
        raise SdliteError(f"{folder} holds {len(photos)} photos: at least {HELD_OUT_EVERY} are needed")
    held_out = photos[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    return [p for p in photos if p not in held_out], held_out


def encode_photos(codec: Codec, photos: list[Path], cache: Path) -> list[np.ndarray]:
    """The encoder's latents of the photos, cached in `cache`."""
    if cache.exists():
        with np.load(cache) as stored:
            return [stored[f"{i}"] for i in range(len(stored.files))]
    latents = []
    for path in tqdm(photos, desc=f"encoding {len(photos)} photos", file=sys.stderr):
        picture = Image.open(path).convert("RGB")
        latents.append(codec.networks.run_encoder(to_array(picture, codec.manifest.downsampling_factor))[0])
    np.savez(cache, **{f"{i}": latent for i, latent in enumerate(latents)})
    return latents


def channel_weights(codec: Codec, latents: list[np.ndarray], crop: int, rng: np.random.Generator) -> np.ndarray:
    """Each channel's squared picture error per unit of squared latent error, through the decoder graph."""
    channels = latents[0].shape[0]
    total = np.zeros(channels)
    for latent in latents[:: max(1, len(latents) // SENSITIVITY_CROPS)][:SENSITIVITY_CROPS]:
        piece = random_crop(latent, crop, rng)[None]
        reference = codec.networks.run_decoder(piece)
        for channel in range(channels):
            noisy = piece.copy()
            noisy[:, channel] += SENSITIVITY_NOISE * rng.standard_normal(noisy.shape[2:]).astype(np.float32)
            total[channel] += np.mean((codec.networks.run_decoder(noisy) - reference) ** 2) / SENSITIVITY_NOISE**2
    return total / SENSITIVITY_CROPS


def random_crop(latent: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    channels, height, width = latent.shape
    if height < side or width < side:
        latent = np.pad(latent, ((0, 0), (0, max(0, side - height)), (0, max(0, side - width))), mode="reflect")
        height, width = latent.shape[1:]
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    return latent[:, top:top + side, left:left + side]


def lambdas(levels: int, lowest: float, highest: float) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(lowest), math.log(highest), levels))


def at_level(table: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """A per-level quantity interpolated geometrically at fractional levels."""
    low = level.floor().clamp(max=len(table) - 2).long()
    fraction = level - low
    return torch.exp(torch.log(table[low]) * (1 - fraction) + torch.log(table[low + 1]) * fraction)


def rate_distortion(codec_model: LatentCodec, batch: torch.Tensor, level: torch.Tensor, weights: torch.Tensor,
                    lambda_table: torch.Tensor, pixels_per_cell: int) -> dict[str, torch.Tensor]:
    out = codec_model(batch, level)
    bpp = out["bits"] / (pixels_per_cell * batch.shape[2] * batch.shape[3])
    distortion = (((out["latent"] - batch) ** 2).mean(dim=(2, 3)) * weights).sum(dim=1)  # picture MSE, [0, 1]
    loss = bpp + at_level(lambda_table, level) * 255**2 * distortion
    return {"loss": loss.mean(), "bpp": bpp.mean(), "mse": distortion.mean()}


def train(model_dir: Path, images: Path, out: Path, steps: int, batch_size: int, crop: int, seed: int,
          learning_rate: float, lowest_lambda: float, highest_lambda: float, device: str | None,
          install: bool = True) -> Path:
    """Trains, writes `out`/latent_codec.safetensors, and (`install`) adds the codec to the model folder."""
    quiet_libraries()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    codec = Codec.load(model_dir, precision="fp32")
    manifest = codec.manifest
    training, held_out = split_photos(images)
    latents = encode_photos(codec, training, out / "latents.npz")
    rng = np.random.default_rng(seed)
    settings_path = out / "settings.json"
    if settings_path.exists():
        settings = json.loads(settings_path.read_text())
    else:
        settings = {"model": manifest.name, "latent_space": manifest.latent_space, "images": str(images),
                    "training_photos": len(training), "held_out_photos": [p.name for p in held_out],
                    "seed": seed, "batch": batch_size, "crop": crop, "learning_rate": learning_rate,
                    "lambdas": [lowest_lambda, highest_lambda],
                    "channel_weights": channel_weights(codec, latents, crop, rng).tolist()}
        settings_path.write_text(json.dumps(settings, indent=1))
    torch.manual_seed(seed)
    random.seed(seed)
    model = LatentCodec(manifest.latent_channels).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))
    step = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step, rng = state["step"], state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
    weights = torch.tensor(settings["channel_weights"], dtype=torch.float32, device=device)
    lambda_table = lambdas(model.shape["levels"], lowest_lambda, highest_lambda).to(device)
    pixels_per_cell = manifest.downsampling_factor**2
    log = open(out / "loss.csv", "a", newline="")
    writer = csv.writer(log)
    if step == 0:
        writer.writerow(["step", "loss", "bpp", "psnr"])
    running = {"loss": 0.0, "bpp": 0.0, "mse": 0.0}
    with tqdm(total=steps, initial=step, desc="training the latent codec", file=sys.stderr) as bar:
        while step < steps:
            batch = torch.from_numpy(np.stack([random_crop(latents[i], crop, rng)
                                               for i in rng.integers(0, len(latents), batch_size)])).to(device)
            level = torch.from_numpy(rng.uniform(0, model.shape["levels"] - 1, batch_size)).float().to(device)
            result = rate_distortion(model, batch, level, weights, lambda_table, pixels_per_cell)
            optimiser.zero_grad()
            result["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            step += 1
            bar.update(1)
            for key in running:
                running[key] += result[key].item() / LOG_EVERY
            if step % LOG_EVERY == 0:
                writer.writerow([step, f"{running['loss']:.5f}", f"{running['bpp']:.5f}",
                                 f"{10 * math.log10(1 / max(running['mse'], 1e-12)):.3f}"])
                log.flush()
                bar.set_postfix(loss=f"{running['loss']:.4f}", bpp=f"{running['bpp']:.4f}")
                running = dict.fromkeys(running, 0.0)
            if step % CHECKPOINT_EVERY == 0 or step == steps:
                torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                            "schedule": schedule.state_dict(), "step": step, "numpy_rng": rng,
                            "torch_rng": torch.get_rng_state()}, checkpoint.with_suffix(".tmp"))
                checkpoint.with_suffix(".tmp").replace(checkpoint)
    log.close()
    weights_path = out / "latent_codec.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights_path,
              metadata={"shape": json.dumps(model.shape), "latent_space": manifest.latent_space,
                        "lambdas": json.dumps(lambda_table.tolist()), "steps": str(steps)})
    if install:
        calibration = [random_crop(latents[i], crop, rng) for i in range(min(len(latents), 8))]
        psnr = install_latent_codec(weights_path, model_dir, calibration)
        print(f"added the latent codec to {model_dir} (latent coded at quality 50: {psnr:.1f} dB)", file=sys.stderr)
    return weights_path
