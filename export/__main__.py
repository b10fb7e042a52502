"""The export's command line: `python -m export build [--model ID_OR_PATH] [--name NAME] [--out DIR]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sdlite.errors import SdliteError

from .build import build
from .precision import BUILDERS
from .sources import DEFAULT_MODEL
from .verify import DEFAULT_TOLERANCE

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main() -> None:
    """Export a Stable Diffusion VAE to ONNX graphs that the sdlite runtime runs without torch."""


@app.command("build")
def build_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                              help="Hugging Face id, local diffusers folder, or .safetensors/.ckpt file."),
    name: Optional[str] = typer.Option(None, "--name", help="Folder name under --out (default: from the model)."),
    out: Path = typer.Option(Path("models"), "--out", help="Directory that holds the model folders."),
    latent_space: Optional[str] = typer.Option(
        None, "--latent-space",
        help="Name of the latent space, shared by models that decode each other's files "
             "(default: known for published VAEs, else these exact weights)."),
    scaling_factor: Optional[float] = typer.Option(None, "--scaling-factor",
                                                   help="Override the VAE's latent scaling factor."),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE, "--tolerance",
                                    help="Largest ONNX-vs-torch difference accepted, relative to the output's range."),
    precisions: str = typer.Option("int8,fp16", "--precisions",
                                   help="Lower-precision variants to make beside float32, comma-separated "
                                        "(int8 for the CPU, fp16 for CUDA), or 'none'."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="Folder of photos to calibrate on: int8 ranges, the variants' quality figures and "
                                    "each latent channel's importance (default: made-up pictures)."),
    gradient: bool = typer.Option(True, "--gradient/--no-gradient",
                                  help="Also write the decoder's gradient graph, which encoder efforts above 0 need."),
) -> None:
    """Export a VAE's encoder and decoder, verify them, and write models/<name>/."""
    chosen = tuple(p for p in precisions.split(",") if p and p != "none")
    try:
        if any(p not in BUILDERS for p in chosen):
            raise SdliteError(f"--precisions {precisions}: choose from {', '.join(BUILDERS)} or none")
        if calibration is not None and not calibration.is_dir():
            raise SdliteError(f"--calibration {calibration}: not a folder")
        build(model, name, out, latent_space, scaling_factor, tolerance, chosen, calibration, gradient)
    except SdliteError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    app(prog_name="python -m export")
