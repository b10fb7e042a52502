"""`python -m bench NAME`: the project's benchmarks (speed, learned, huge, tiles, entropy, fuzz, rd, quality)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main() -> None:
    """sdlite's benchmarks: each prints its table and writes it under bench/results/."""


@app.command()
def speed(
    sd_model: Optional[Path] = typer.Option(None, "--sd-model", help="Exported random-weight SD 1.x VAE "
                                            "(default: made and exported once under bench/results/models)."),
    taef2: Optional[Path] = typer.Option(None, "--taef2", help="Exported TAEF2 model folder, for its speed and cold start."),
    repeats: int = typer.Option(2, "--repeats", min=1, help="Warm runs per case (the best is reported)."),
    out: Path = typer.Option(Path("bench/results/speed.md"), "--out", help="Markdown table to write."),
    kodak: bool = typer.Option(True, "--kodak/--no-kodak", help="Also time a Kodak photo (768x512)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda: where every engine runs."),
) -> None:
    """Encode and decode time, GFLOP/s, peak memory and cold start: sdlite's precisions, torch, diffusers."""
    from .speed import main as run

    run(sd_model, taef2, repeats, out, kodak, device)


@app.command()
def learned(
    model: Path = typer.Option(Path("models/taef2"), "--model", help="Exported model folder with a latent codec."),
    picture: Path = typer.Option(Path("../shared/data/kodak/kodim01.png"), "--picture"),
    quality: float = typer.Option(50, "--quality"),
    repeats: int = typer.Option(3, "--repeats", min=1),
    precision: str = typer.Option("fp32", "--precision", help="The decoder's precision it is compared with."),
    out: Path = typer.Option(Path("bench/results/learned.md"), "--out"),
) -> None:
    """The learned method's own decoding time against the VAE decoder's, at 768x512."""
    from .learned import main as run

    print(run(model, picture, quality, repeats, precision, out))


@app.command()
def quality(
    model: Path = typer.Option(Path("models/taef2"), "--model", help="Exported model folder."),
    images: Path = typer.Option(Path("../shared/data/kodak"), "--images", help="Folder of PNG photos."),
    qualities: str = typer.Option("0,50,90,100", "--qualities", help="Comma-separated qualities."),
    precision: str = typer.Option("auto", "--precision"),
) -> None:
    """Size and PSNR of each quality setting, against JPEG of the same size."""
    from .quality import main as run

    run(model, images, [int(q) for q in qualities.split(",")], precision)


@app.command()
def huge(
    model: Path = typer.Option(..., "--model", help="Exported model folder."),
    precision: str = typer.Option("auto", "--precision"),
    max_memory: float = typer.Option(2.5, "--max-memory-gib", help="Budget of one network run, GiB."),
    side: int = typer.Option(4096, "--side"),
    spill: bool = typer.Option(False, "--spill", help="Tiles in step with what they hold in files (sdlite's --spill)."),
    out: Path = typer.Option(Path("bench/results/huge.md"), "--out"),
) -> None:
    """A 4096x4096 picture through the tiled codec: time, tiles and the process's peak RSS."""
    from .huge import main as run

    line = run(model, precision, int(max_memory * 2**30), side, spill=spill)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@app.command()
def tiles(
    model: Path = typer.Option(..., "--model", help="Exported model folder."),
    precision: str = typer.Option("fp32", "--precision"),
    tile: int = typer.Option(None, "--tile", help="Latent cells per tile side (default: as the budget has them)."),
    side: int = typer.Option(None, "--side", help="The Kodak photo scaled to side x side pixels."),
    max_memory: float = typer.Option(2.5, "--max-memory-gib", help="Budget of one network run, GiB."),
    out: Path = typer.Option(Path("bench/results/tiles.md"), "--out"),
) -> None:
    """How closely a tiled encode and decode agree with the whole one, on a picture that fits whole."""
    from .huge import agreement

    line = agreement(model, precision, tile, side, int(max_memory * 2**30))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@app.command()
def entropy(
    model: Path = typer.Option(..., "--model", help="Exported model folder (its latents are coded)."),
    images: int = typer.Option(4, "--images", min=0, help="Kodak photos to code (0: only the hostile files)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Decodes per case (the best is reported)."),
    out: Path = typer.Option(Path("bench/results/entropy.md"), "--out"),
) -> None:
    """Entropy decoding speed in symbols per second for each method, real latents and hostile files."""
    from .entropy import main as run

    run(model, images, repeats, out)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def fuzz(context: typer.Context) -> None:
    """Hostile .sdc files and hostile model folders (`python -m bench fuzz --help`)."""
    import sys

    from .fuzz import main as run

    sys.argv = ["python -m bench fuzz", *context.args]
    raise typer.Exit(run())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def rd(context: typer.Context) -> None:
    """Rate-distortion: sdlite's methods against JPEG, WebP, AVIF and JPEG XL (`python -m bench rd --help`)."""
    from .rd import main as run

    raise typer.Exit(run(context.args))


if __name__ == "__main__":
    app(prog_name="python -m bench")
