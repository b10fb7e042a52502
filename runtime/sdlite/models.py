"""Finding model folders: by path, by name under the models directory, or the only one installed."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SdliteError
from .manifest import MANIFEST_NAME, load_manifest

MODELS_DIR_ENV = "SDLITE_MODELS_DIR"


def models_dir() -> Path:
    """$SDLITE_MODELS_DIR, or models/ in the current folder (where scripts/demo.sh installs its model)."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


def installed_models(directory: Path | None = None) -> list[Path]:
    directory = models_dir() if directory is None else directory
    try:
        return sorted(p for p in directory.iterdir() if (p / MANIFEST_NAME).is_file())
    except OSError:  # no such directory, or one this user cannot list
        return []


def latent_space_of(folder: Path) -> bytes | None:
    """The model's latent space id; None for a broken model, which then only fails where it is chosen."""
    try:
        return load_manifest(folder).latent_space_id
    except SdliteError:
        return None


def find_model(model: str | os.PathLike | None = None, latent_space: bytes | None = None) -> Path:
    """The folder of the model to use.

    `model` is a folder or a name under the models directory. Without it, the only installed model
    is used, or, when several are installed and `latent_space` is given (decoding a file), the only
    one of that latent space.
    """
    if model is not None:
        folder = Path(model)
        if (folder / MANIFEST_NAME).is_file():
            return folder
        named = models_dir() / str(model)
        if (named / MANIFEST_NAME).is_file():
            return named
        raise SdliteError(f"model {str(model)!r} not found: not a model folder, nor a name under {models_dir()}/")

    candidates = installed_models()
    if not candidates:
        raise SdliteError(f"no model installed in {models_dir().absolute()} (the models folder: ${MODELS_DIR_ENV}, "
                          f"or models/ in the current folder): export one there with `python -m export build`, "
                          f"or name a model folder")
    if len(candidates) > 1 and latent_space is not None:
        candidates = [p for p in candidates if latent_space_of(p) == latent_space] or candidates
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise SdliteError(f"several models installed ({names}): choose one with --model")
    return candidates[0]
