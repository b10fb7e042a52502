"""Small randomly initialised VAEs, built and exported inside the test session (no network, no shared/),
for the tests that run the exported models end to end."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from bench.speed import SD1_CONFIG  # noqa: F401  (the full-size architecture, shared with the benchmark)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
TAEF2 = SHARED / "models" / "taef2"

# Four blocks give the real 1/8 downsampling; 32 channels keep it fast. The scaling factor brings the
# random latent (std about 0.23) to about unit variance, as a trained VAE's factor does (SD's 0.18215
# left it at 0.04, far below even the finest step of the quality scale, 1/4: every level was zero).
TINY_CONFIG = dict(
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    scaling_factor=4.0,
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
    """A command's run to its end: no time limit, which a correct build on a busy machine could exceed."""
    return subprocess.run(list(args), cwd=cwd, env={**os.environ, **(env or {})}, input=input, capture_output=True)


def export_command(*args: str) -> tuple[int, str]:
    """`python -m export ARGS` run in this process, which has imported torch already (a fresh interpreter
    spends about 7 s on the imports): its exit status and stderr. An exception other than the command's
    own exit is what the user would see as a traceback, so it fails the test."""
    from typer.testing import CliRunner

    from export.__main__ import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def export_process(*args: str) -> tuple[int, str]:
    """`python -m export ARGS` in a process of its own."""
    result = run(sys.executable, "-m", "export", *args)
    return result.returncode, result.stderr.decode()


def export_model(source: Path, out: Path, *extra: str, command: Callable = export_command) -> Path:
    """Run the real export's `build` on a local model and return the folder it wrote."""
    status, stderr = command("build", "--model", str(source), "--out", str(out), *extra)
    assert status == 0, stderr
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
def learned_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a latent codec trained on it for a few steps by `python -m export train-codec`."""
    import shutil

    from pictures import photo

    root = tmp_path_factory.mktemp("learned")
    folder = root / "models" / "tiny"
    shutil.copytree(tiny_model, folder)
    photos = root / "photos"
    photos.mkdir()
    for seed in range(10):
        photo(72, 56, seed).save(photos / f"{seed}.png")
    status, stderr = export_command("train-codec", "--model", str(folder), "--images", str(photos), "--out",
                                    str(root / "training"), "--steps", "4", "--batch", "2", "--crop", "8")
    assert status == 0, stderr
    return folder


def save_random_tae(folder: Path, latent_channels: int, pooled: bool, seed: int = 0) -> Path:
    """A random tiny autoencoder in the TAESD/TAEF2 checkpoint layout: a tiny_encoder.pth/tiny_decoder.pth pair."""
    import torch

    from export import tae

    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    torch.save(tae.Encoder(latent_channels, pooled).state_dict(), folder / "tiny_encoder.pth")
    torch.save(tae.Decoder(latent_channels, pooled).state_dict(), folder / "tiny_decoder.pth")
    return folder


def saved_vae(config: dict, seed: int) -> Callable[[Path], Path]:
    def save(folder: Path) -> Path:
        make_vae(config, seed).save_pretrained(folder)
        return folder
    return save


# The models that tests share, in the order they are exported (tiny_model, needed by most tests, is
# exported in the foreground): how each one's source is made in a folder, and the export's options.
SHARED_EXPORTS = {
    "other_model": (saved_vae(TINY_CONFIG, seed=1), ("--precisions", "none", "--no-gradient")),
    "sd1_model": (saved_vae(SD1_CONFIG, seed=0), ("--precisions", "none", "--no-gradient")),
    "taef2_model": (lambda folder: TAEF2, ("--precisions", "int8")),  # fp16 is for CUDA
    "tae_model": (lambda folder: save_random_tae(folder, 4, pooled=False) / "tiny_encoder.pth", ("--no-gradient",)),
}


# Fixtures that use a shared export without being named for it.
USES_EXPORT = {"taef2_model_if_here": "taef2_model"}


def exports_used(item: pytest.Item) -> set[str]:
    """By fixture name, or by the name that a test parametrised over fixtures asks for."""
    names = set(item.fixturenames)
    if hasattr(item, "callspec"):
        names |= {value for value in item.callspec.params.values() if isinstance(value, str)}
    return {USES_EXPORT.get(name, name) for name in names} & SHARED_EXPORTS.keys()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that need shared exports run after the others, in the exports' order: they then find their
    model made, instead of waiting for it while a core stands idle."""
    turn = {name: position for position, name in enumerate(SHARED_EXPORTS, start=1)}
    items.sort(key=lambda item: max((turn[name] for name in exports_used(item)), default=0))


class BackgroundExports:
    """The shared models, exported one after another on a thread of their own while the tests run. An
    export is mostly a fresh interpreter's imports and single-threaded tracing, so on two cores it overlaps
    the tests instead of holding them up. The sources are made when the session starts, in the main thread
    (random weights come from torch's one global generator); a model asked for before its turn is exported
    there and then."""

    def __init__(self, tmp_path_factory, wanted: set[str]):
        self._tmp_path_factory = tmp_path_factory
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._queued: dict[str, tuple[Future, Callable[[], Path]]] = {}
        self._made: dict[str, Path] = {}
        for name in SHARED_EXPORTS:
            if name in wanted and (name != "taef2_model" or TAEF2.is_dir()):
                export = self._export(name)
                self._queued[name] = self._pool.submit(export), export

    def _export(self, name: str) -> Callable[[], Path]:
        make_source, options = SHARED_EXPORTS[name]
        root = self._tmp_path_factory.mktemp(name)
        # In processes of their own: torch's exporter must not trace on this thread while a test traces on another.
        return functools.partial(export_model, make_source(root / "source"), root / "models", *options,
                                 command=export_process)

    def model(self, name: str) -> Path:
        if name not in self._made:
            if name in self._queued:
                future, export = self._queued[name]
                self._made[name] = export() if future.cancel() else future.result()
            else:
                self._made[name] = self._export(name)()
        return self._made[name]

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="session", autouse=True)
def shared_exports(request, tmp_path_factory, session_cache) -> BackgroundExports:
    exports = BackgroundExports(tmp_path_factory, {name for item in request.session.items for name in exports_used(item)})
    yield exports
    exports.close()


@pytest.fixture(scope="session")
def other_model(shared_exports) -> Path:
    """Another random VAE of the same shape: a different latent space."""
    return shared_exports.model("other_model")


@pytest.fixture(scope="session")
def sd1_model(shared_exports) -> Path:
    """The full-size SD 1.x architecture with random weights."""
    return shared_exports.model("sd1_model")


@pytest.fixture(scope="session")
def tae_model(shared_exports) -> Path:
    """A random TAESD-shaped tiny autoencoder, exported from one half of its pair with the lower-precision
    variants: convolutions only (no norms, no attention), so every output sees a bounded neighbourhood
    and tiles can agree with the whole picture."""
    return shared_exports.model("tae_model")


@pytest.fixture(scope="session")
def taef2_model_if_here(shared_exports) -> Path | None:
    """The real TAEF2's export where its weights are here, else None: for tests that then make a random model."""
    return shared_exports.model("taef2_model") if TAEF2.is_dir() else None


@pytest.fixture(scope="session")
def taef2_model(shared_exports) -> Path:
    """The real pretrained TAEF2, exported once for every test that measures real quality."""
    if not TAEF2.is_dir():
        pytest.skip(f"the pretrained TAEF2 weights are not here ({TAEF2})")
    return shared_exports.model("taef2_model")
