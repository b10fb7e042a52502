"""Loading an autoencoder from a Hugging Face id, a local folder, or a weights file.

Two families: diffusers' AutoencoderKL (the SD VAEs: a hub id, a diffusers folder, or one
.safetensors/.ckpt file in diffusers or original SD layout) and the tiny autoencoders (TAESD, TAEF2:
a folder or file pair `*_encoder.pth` / `*_decoder.pth`). Either way the result is a raw encoder
(image in [0, 1] -> latent) and a raw decoder (latent -> image in about [0, 1]).
Weights are read with safetensors or torch.load(weights_only=True): loading never runs pickled code.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import AutoencoderKL

from sdlite.errors import SdliteError

from . import tae
from .graphs import DecoderGraph, EncoderGraph

DEFAULT_MODEL = "stabilityai/sd-vae-ft-mse"
LDM_DEFAULT_SCALING_FACTOR = 0.18215
LDM_PREFIXES = ("first_stage_model.", "vae.")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
HUB_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
TAE_HALVES = ("_encoder", "_decoder")

# Latent spaces shared by several published VAEs: a file made with one decodes with the others.
KNOWN_LATENT_SPACES = {
    "stabilityai/sd-vae-ft-mse": "sd-v1",
    "stabilityai/sd-vae-ft-ema": "sd-v1",
    "CompVis/stable-diffusion-v1-4": "sd-v1",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd-v1",
    "runwayml/stable-diffusion-v1-5": "sd-v1",
    "stabilityai/stable-diffusion-2-1": "sd-v1",
    "stabilityai/stable-diffusion-2-1-base": "sd-v1",
    "stabilityai/sdxl-vae": "sdxl",
    "madebyollin/sdxl-vae-fp16-fix": "sdxl",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
}


@dataclass
class LoadedModel:
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    latent_channels: int
    downsampling_factor: int
    scaling_factor: float
    shift_factor: float
    source: str
    name: str
    latent_space: str

    def encoder_graph(self) -> EncoderGraph:
        return EncoderGraph(self.encoder, self.scaling_factor, self.shift_factor).eval()

    def decoder_graph(self) -> DecoderGraph:
        return DecoderGraph(self.decoder, self.scaling_factor, self.shift_factor).eval()


class SdEncoder(torch.nn.Module):
    """AutoencoderKL's posterior mean (deterministic: no sampling) for an image in [0, 1]."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image * 2.0 - 1.0).latent_dist.mean


class SdDecoder(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return (self.vae.decode(latent).sample + 1.0) / 2.0


def load_model(model: str, scaling_factor: float | None = None) -> LoadedModel:
    path = Path(model).expanduser()
    if path.is_dir() and _tae_pair(path) is not None:
        loaded = _from_tae_pair(*_tae_pair(path), name=path.resolve().name)
    elif path.is_file() and path.stem.endswith(TAE_HALVES):
        pair = _tae_pair(path.parent, path.stem[: -len("_encoder")])
        if pair is None:
            raise SdliteError(f"{path}: a tiny autoencoder needs both *_encoder and *_decoder weights beside each other")
        loaded = _from_tae_pair(*pair, name=path.stem[: -len("_encoder")])
    elif path.is_dir():
        name = path.resolve().parent.name if path.resolve().name == "vae" else path.resolve().name
        loaded = from_autoencoder_kl(_from_folder(path), str(path.resolve()), name)
    elif path.is_file():
        loaded = from_autoencoder_kl(_from_single_file(path), str(path.resolve()), path.stem)
    elif HUB_ID.match(model):
        loaded = from_autoencoder_kl(_from_folder(_fetch_from_hub(model)), model, model.split("/")[1],
                                     KNOWN_LATENT_SPACES.get(model))
    else:
        raise SdliteError(f"--model {model}: no such file or folder, and not a Hugging Face id (owner/name)")
    if scaling_factor is not None:
        loaded.scaling_factor = scaling_factor
    return loaded


def from_autoencoder_kl(vae: AutoencoderKL, source: str, name: str, latent_space: str | None = None) -> LoadedModel:
    vae = vae.eval()
    return LoadedModel(
        encoder=SdEncoder(vae),
        decoder=SdDecoder(vae),
        latent_channels=int(vae.config.latent_channels),
        downsampling_factor=2 ** (len(vae.config.block_out_channels) - 1),
        scaling_factor=float(vae.config.scaling_factor),
        shift_factor=float(vae.config.shift_factor or 0.0),
        source=source,
        name=name,
        latent_space=latent_space or f"weights-{_weights_digest(vae)}",
    )


def _tae_pair(folder: Path, stem: str = "*") -> tuple[Path, Path] | None:
    """The one pair of TAE weight files in `folder` whose names share `stem`, if there is one."""
    for suffix in WEIGHT_SUFFIXES:
        encoders = sorted(folder.glob(f"{stem}_encoder{suffix}"))
        if len(encoders) == 1:
            decoder = encoders[0].with_name(encoders[0].name.replace("_encoder", "_decoder"))
            if decoder.is_file():
                return encoders[0], decoder
    return None


def _from_tae_pair(encoder_path: Path, decoder_path: Path, name: str) -> LoadedModel:
    encoder_state, decoder_state = _read_state_dict(encoder_path), _read_state_dict(decoder_path)
    try:
        encoder, decoder = tae.build_encoder(encoder_state), tae.build_decoder(decoder_state)
    except (RuntimeError, KeyError, ValueError) as exc:  # load_state_dict's mismatch errors
        raise SdliteError(f"{encoder_path.parent}: not a tiny autoencoder checkpoint ({_first_line(exc)})") from None
    return LoadedModel(
        encoder=encoder,
        decoder=decoder,
        latent_channels=tae.latent_channels(encoder_state),
        downsampling_factor=tae.DOWNSAMPLING_FACTOR,
        scaling_factor=1.0,  # TAE latents come out already scaled
        shift_factor=0.0,
        source=str(encoder_path.parent.resolve()),
        name=name,
        latent_space=f"weights-{_weights_digest(encoder, decoder)}",
    )


def _from_folder(folder: Path) -> AutoencoderKL:
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise SdliteError(f"{folder} is not a diffusers model folder: it has no config.json")
    try:
        return AutoencoderKL.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise SdliteError(f"cannot load a diffusers AutoencoderKL from {folder}: {_first_line(exc)}") from None


def _fetch_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    try:  # a cached copy needs no network
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    unreachable = (
        f"cannot reach the Hugging Face hub to download {repo_id}: download it where the hub is reachable "
        f"and pass the folder or weights file with --model PATH"
    )
    if not _hub_resolves():
        raise SdliteError(unreachable)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:
        raise SdliteError(f"{unreachable} ({_first_line(exc)})") from None


def _hub_resolves() -> bool:
    """False at once when the hub's name does not resolve, instead of a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy resolves names for us
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _from_single_file(path: Path) -> AutoencoderKL:
    state = _read_state_dict(path)
    if not any(key.startswith("encoder.down_blocks.") for key in state):
        state = _ldm_to_diffusers(state)
    config = _config_from_diffusers_keys(state)
    vae = AutoencoderKL(**config)
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing:
        raise SdliteError(f"{path}: not an AutoencoderKL checkpoint ({len(missing)} weights missing, e.g. {missing[0]})")
    return vae


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        elif path.suffix in WEIGHT_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise SdliteError(f"{path}: expected a .safetensors or .ckpt weights file")
    except SdliteError:
        raise
    except Exception as exc:  # safetensors and the unpickler raise many unrelated types for bad files
        raise SdliteError(f"{path}: cannot read weights ({_first_line(exc)})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SdliteError(f"{path}: not a state dict of tensors")
    return state


def _ldm_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Stable Diffusion (LDM) key names, as in full .ckpt/.safetensors checkpoints, to diffusers'."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    for prefix in LDM_PREFIXES:
        if any(key.startswith(prefix + "encoder.") for key in state):
            state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if "encoder.down.0.block.0.conv1.weight" not in state:
        raise SdliteError("the weights file holds no VAE: neither diffusers nor original Stable Diffusion layout")
    blocks = sum(1 for key in state if re.fullmatch(r"encoder\.down\.\d+\.block\.0\.conv1\.weight", key))
    # The converter reads nothing from the config but the number of blocks.
    block_types = {"down_block_types": [None] * blocks, "up_block_types": [None] * blocks}
    return convert_ldm_vae_checkpoint(state, block_types)


def _config_from_diffusers_keys(state: dict[str, torch.Tensor]) -> dict:
    """An AutoencoderKL config read off the weight shapes (GroupNorm's 32 groups are not in the weights)."""
    blocks = sum(1 for key in state if re.fullmatch(r"encoder\.down_blocks\.\d+\.resnets\.0\.conv1\.weight", key))
    layers = sum(1 for key in state if re.fullmatch(r"encoder\.down_blocks\.0\.resnets\.\d+\.conv1\.weight", key))
    return {
        "in_channels": state["encoder.conv_in.weight"].shape[1],
        "out_channels": state["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * blocks,
        "up_block_types": ["UpDecoderBlock2D"] * blocks,
        "block_out_channels": [state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(blocks)],
        "layers_per_block": layers,
        "latent_channels": state["decoder.conv_in.weight"].shape[1],
        "scaling_factor": LDM_DEFAULT_SCALING_FACTOR,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": any(key.startswith("encoder.mid_block.attentions.") for key in state),
    }


def _weights_digest(*modules: torch.nn.Module) -> str:
    """Names a latent space nobody has named: files from these exact weights only."""
    digest = hashlib.sha256()
    for module in modules:
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
