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
    latent_codec: Optional[str] = typer.Option(
        None, "--latent-codec",
        help="Trained latent codec weights (train-codec's latent_codec.safetensors) for the learned method, or "
             "'none' (default: the one shipped for this latent space, if any)."),
) -> None:
    """Export a VAE's encoder and decoder, verify them, and write models/<name>/."""
    chosen = tuple(p for p in precisions.split(",") if p and p != "none")
    try:
        if any(p not in BUILDERS for p in chosen):
            raise SdliteError(f"--precisions {precisions}: choose from {', '.join(BUILDERS)} or none")
        if calibration is not None and not calibration.is_dir():
            raise SdliteError(f"--calibration {calibration}: not a folder")
        codec_weights = True if latent_codec is None else False if latent_codec == "none" else Path(latent_codec)
        if isinstance(codec_weights, Path) and not codec_weights.is_file():
            raise SdliteError(f"--latent-codec {latent_codec}: no such file")
        build(model, name, out, latent_space, scaling_factor, tolerance, chosen, calibration, gradient, codec_weights)
    except SdliteError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None


@app.command("train-codec")
def train_codec_command(
    model: Path = typer.Option(..., "--model", "-m", help="An exported model folder (its encoder and decoder graphs)."),
    images: Path = typer.Option(..., "--images", help="Folder of training photos; every tenth is held out."),
    out: Path = typer.Option(..., "--out", help="Folder for the latent cache, checkpoint, loss log and weights."),
    steps: int = typer.Option(16000, "--steps", help="Optimisation steps in all (a resumed run counts on)."),
    batch: int = typer.Option(8, "--batch", help="Latent crops per step."),
    crop: int = typer.Option(32, "--crop", help="Side of a latent crop, in latent cells (a multiple of 8)."),
    seed: int = typer.Option(0, "--seed"),
    learning_rate: float = typer.Option(5e-4, "--learning-rate"),
    lowest_lambda: float = typer.Option(1e-5, "--lowest-lambda", help="Rate-distortion weight of the coarsest level."),
    highest_lambda: float = typer.Option(1e-2, "--highest-lambda", help="... and of the finest."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda when there is one)."),
    install: bool = typer.Option(True, "--install/--no-install",
                                 help="Add the trained codec to the model folder (its learned method)."),
) -> None:
    """Train the latent codec (analysis, synthesis and hyperprior) for an exported model; resumable."""
    from .train_codec import train

    try:
        if crop % 8 or crop < 8:
            raise SdliteError(f"--crop {crop}: use a multiple of 8")
        if not images.is_dir():
            raise SdliteError(f"--images {images}: not a folder")
        path = train(model, images, out, steps, batch, crop, seed, learning_rate, lowest_lambda, highest_lambda,
                     device, install)
    except SdliteError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    app(prog_name="python -m export")
