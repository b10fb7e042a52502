"""Small randomly initialised VAEs, built and exported inside the test session (no network, no shared/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.speed import SD1_CONFIG  # noqa: F401  (the full-size architecture, shared with the benchmark)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TAEF2 = SHARED / "models" / "taef2"

# Four blocks give the real 1/8 downsampling; 32 channels keep it fast.
TINY_CONFIG = dict(
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """The optimised-graph cache of sdlite and its subprocesses goes to a temporary folder, not ~/.cache."""
    os.environ["SDLITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


def make_vae(config: dict, seed: int):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**config).eval()


def run(*args: str, env: dict | None = None, input: bytes | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env={**os.environ, **(env or {})}, input=input,
                          capture_output=True, timeout=600)


def export_model(source: Path, out: Path, *extra: str) -> Path:
    """Run the real `python -m export build` on a local model and return the folder it wrote."""
    result = run(sys.executable, "-m", "export", "build", "--model", str(source), "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr.decode()
    folders = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    assert len(folders) == 1
    return folders[0]


@pytest.fixture(scope="session")
def tiny_vae_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-vae") / "tiny"
    make_vae(TINY_CONFIG, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_vae_folder, tmp_path_factory) -> Path:
    return export_model(tiny_vae_folder, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> Path:
    """Another random VAE of the same shape: a different latent space."""
    folder = tmp_path_factory.mktemp("other-vae") / "other"
    make_vae(TINY_CONFIG, seed=1).save_pretrained(folder)
    return export_model(folder, tmp_path_factory.mktemp("models"), "--precisions", "none", "--no-gradient")


@pytest.fixture(scope="session")
def sd1_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd1-vae") / "sd1"
    make_vae(SD1_CONFIG, seed=0).save_pretrained(folder)
    return export_model(folder, tmp_path_factory.mktemp("models"), "--precisions", "none", "--no-gradient")


def save_random_tae(folder: Path, latent_channels: int, pooled: bool, seed: int = 0) -> Path:
    """A random tiny autoencoder in the TAESD/TAEF2 checkpoint layout: a tiny_encoder.pth/tiny_decoder.pth pair."""
    import torch

    from export import tae

    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    torch.save(tae.Encoder(latent_channels, pooled).state_dict(), folder / "tiny_encoder.pth")
    torch.save(tae.Decoder(latent_channels, pooled).state_dict(), folder / "tiny_decoder.pth")
    return folder


@pytest.fixture(scope="session")
def tae_model(tmp_path_factory) -> Path:
    """A random TAESD-shaped tiny autoencoder, exported from one half of its pair with the lower-precision
    variants: convolutions only (no norms, no attention), so every output sees a bounded neighbourhood
    and tiles can agree with the whole picture."""
    source = save_random_tae(tmp_path_factory.mktemp("tae") / "tae", 4, pooled=False)
    return export_model(source / "tiny_encoder.pth", tmp_path_factory.mktemp("models"), "--no-gradient")


@pytest.fixture(scope="session")
def taef2_model(tmp_path_factory) -> Path:
    """The real pretrained TAEF2, exported once for every test that measures real quality."""
    if not TAEF2.is_dir():
        pytest.skip(f"the pretrained TAEF2 weights are not here ({TAEF2})")
    return export_model(TAEF2, tmp_path_factory.mktemp("models"), "--precisions", "int8")  # fp16 is for CUDA
