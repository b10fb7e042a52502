"""The `sdlite` command: a thin layer over the Python API."""

from __future__ import annotations

import errno
import functools
import io
import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from PIL import Image
from typer.core import TyperCommand

from . import __version__, methods
from .batch import Work, default_jobs, run_all
from .codec import DEFAULT_MAX_MEMORY, DEFAULT_MAX_PIXELS, DEFAULT_QUALITY, Codec
from .container import SdcFile
from .effort import EFFORT_STEPS, MAX_EFFORT
from .errors import SdliteError
from .files import check_replaceable, write_atomic
from .networks.inference import DEVICES
from .manifest import load_manifest
from .models import installed_models, models_dir
from .networks.precision import ACCEPTABLE_PSNR_DB, AUTO, CHOICES

STDIO = "-"
# Above this estimated decoder time for the picture, encode's summary leaves the round trip's PSNR out
# unless --psnr asks for it: a summary line must not double the time of an encode. TAEF2 decodes a
# 768x512 photo in well under a second, the SD VAE in tens of seconds; the export's recorded times,
# which the estimate scales, can be several times too long when it ran on a busy machine.
CHEAP_DECODE_SECONDS = 5.0
LOSSY_FORMATS = {"JPEG": "JPEG", "WEBP": "WebP", "AVIF": "AVIF"}  # Pillow formats that take quality=
# The command-line parser's exceptions: recent typer releases carry their own copy of click, older ones use
# click itself; typer's BadParameter comes from whichever it is.
parser_errors = sys.modules[typer.BadParameter.__module__]


class Command(TyperCommand):
    """Help in the usual form: `FILE...` for arguments and each option's metavar, without typer's type labels."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return ["[OPTIONS]", *(argument_usage(p) for p in self.get_params(ctx) if p.param_type_name == "argument")]

    def format_options(self, ctx: typer.Context, formatter) -> None:
        params = self.get_params(ctx)
        arguments = [(argument_usage(p), getattr(p, "help", None) or "") for p in params
                     if p.param_type_name == "argument"]
        options = [p.get_help_record(ctx) for p in params if p.param_type_name == "option"]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        with formatter.section("Options"):
            formatter.write_dl([record for record in options if record is not None])


def argument_usage(argument) -> str:
    return (argument.metavar or argument.name.upper()) + ("..." if argument.nargs != 1 else "")


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="sdlite: a learned image codec on the Stable Diffusion VAE.")

ModelOption = typer.Option(None, "--model", "-m", metavar="NAME|FOLDER",
                           help="Model folder, or name under the models directory.")
DeviceOption = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, cuda or auto.")
OutputOption = typer.Option(None, "--output", "-o", metavar="PATH",
                            help="Output file ('-' for stdout), or a folder: one that exists or a name ending in "
                                 "'/' (several inputs need a folder).")
PrecisionOption = typer.Option(AUTO, "--precision", metavar="PRECISION",
                               help=f"{'|'.join(CHOICES)}: the graphs' arithmetic; auto takes the fastest variant "
                                    f"within {ACCEPTABLE_PSNR_DB:g} dB of float32 on the device.")
MaxMemoryOption = typer.Option(f"{DEFAULT_MAX_MEMORY / 2**30:g}G", "--max-memory", metavar="SIZE",
                               help="Memory one network run may use (e.g. 4G, 800M) before images are cut into "
                                    "overlapping tiles.")
TileOption = typer.Option(None, "--tile", min=4, metavar="N",
                          help="Tiles of this many latent cells a side (overrides --max-memory).")
SpillOption = typer.Option(False, "--spill",
                           help="Tiles that would need more than --max-memory to see the whole picture's statistics "
                                "hold what they need in files instead of running alone: the whole run's picture, "
                                "several times slower.")
ForceOption = typer.Option(False, "--force", "-f",
                           help="Replace outputs that already exist, and write binary data to a terminal.")
MaxPixelsOption = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, metavar="N",
                               help="Refuse images (and files that claim images) with more pixels.")
JobsOption = typer.Option(0, "--jobs", "-j", min=0, metavar="N",
                          help="Worker processes for several files (0: one per core, at most one per file).")
QuietOption = typer.Option(False, "--quiet", help="Print errors only: no summary, progress or warnings.")
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def fail(message: str) -> None:
    typer.echo(f"sdlite: error: {message}", err=True)
    raise typer.Exit(1)


def usage_error(message: str) -> Exception:
    """A mistake in the command line itself: reported in one line, exit status 2 (see main)."""
    return parser_errors.UsageError(message)


def display_name(name: str, output: bool = False) -> str:
    return ("stdout" if output else "stdin") if name == STDIO else name


def check_choice(option: str, value: str, choices) -> None:
    if value not in choices:
        raise usage_error(f"{option}: unknown {option.lstrip('-')} {value!r}: choose one of {', '.join(choices)}")


def read_input(name: str) -> bytes:
    if name == STDIO:
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise SdliteError(exc.strerror or str(exc)) from None


def refuse_existing(name: str, force: bool) -> None:
    """Before the work: an output that --force may not replace, or that exists without it."""
    if name == STDIO:
        return
    if force:
        check_replaceable(Path(name))
    elif os.path.lexists(name):
        raise SdliteError(f"{name} already exists (use --force to replace it)")


def write_stdout(data: bytes) -> None:
    """`data` on stdout, or one clear error when stdout is closed (`>&-`) or cannot take it (a full disk,
    /dev/full, a closed pipe)."""
    if sys.stdout is None:
        raise SdliteError("cannot write to stdout: it is closed")
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError as exc:
        discard_stdout()
        raise SdliteError(f"cannot write to stdout: {exc.strerror or exc}") from None


def discard_stdout() -> None:
    """What is left in stdout's buffers goes nowhere, so Python's flush at exit has nothing to fail on."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        sys.stdout = None


def write_output(name: Path | str, data: bytes, force: bool) -> None:
    if str(name) == STDIO:
        write_stdout(data)
        return
    try:
        write_atomic(Path(name), data, replace=force)
    except FileExistsError:
        raise SdliteError(f"{name} already exists (use --force to replace it)") from None
    except OSError as exc:
        raise SdliteError(f"cannot write {name}: {exc.strerror or exc}") from None


def names_a_folder(output: str) -> bool:
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def output_names(inputs: list[str], output: Optional[str], suffix: str) -> list[str]:
    """Where each input's result goes: -o names a file for one input, or a folder (one that exists, or a
    name ending in '/', made if missing) where each result is named after its input; without -o, each
    result goes beside its input (stdin's to stdout)."""
    several = len(inputs) > 1
    if several and STDIO in inputs:
        raise usage_error("'-' (stdin) can only be used as the only input")
    if output == STDIO and several:
        raise usage_error(f"{len(inputs)} inputs cannot all be written to stdout: give a folder with -o, e.g. -o out/")
    if output is None or output == STDIO:
        names = [STDIO if name == STDIO or output == STDIO else str(Path(name).with_suffix(suffix)) for name in inputs]
    elif names_a_folder(output) or several:
        if not names_a_folder(output):
            what = "a file" if os.path.lexists(output) else "not a folder"
            raise usage_error(f"-o {output} is {what}, and {len(inputs)} inputs need a folder: "
                              f"name one that exists or end it with '/' (e.g. -o {Path(output).stem}/)")
        if inputs == [STDIO]:
            raise usage_error(f"stdin has no name to use in the folder {output}: give -o a file name")
        folder = Path(output)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SdliteError(f"cannot make the folder {output}: {exc.strerror or exc}") from None
        names = [str(folder / (Path(name).stem + suffix)) for name in inputs]
    else:
        names = [output]
    for source, target in zip(inputs, names):
        if source != STDIO and target != STDIO and same_file(source, target):
            raise SdliteError(f"{source}: the output would overwrite the input")
    return names


def refuse_terminal(outputs: list[str], force: bool) -> None:
    """Binary data on a terminal is garbage that can upset it (gzip refuses it too, unless forced)."""
    if STDIO in outputs and not force and sys.stdout is not None and sys.stdout.isatty():
        raise usage_error("will not write binary data to a terminal: redirect the output, give -o FILE, "
                          "or use --force")


def same_file(source: str, target: str) -> bool:
    """Also through symbolic and hard links, which a path comparison misses."""
    try:
        return os.path.samefile(source, target)
    except OSError:  # one of them does not exist (yet)
        return Path(target).resolve() == Path(source).resolve()


FILE_SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "KIB": 1024, "MIB": 1024**2}


def parse_file_size(text: str) -> int:
    """Bytes from '5KB', '5 kB', '12000', '1.5MB' or '4KiB' (cwebp's and avifenc's KB is 1000 bytes)."""
    number = text.strip().rstrip("bBiIkKmM ")
    unit = text.strip()[len(number):].strip().upper()
    try:
        value = float(number) * FILE_SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise usage_error(f"--size {text!r}: give a number of bytes, optionally with B, KB, MB, KiB or MiB") from None
    if not 1 <= value < 2**40:
        raise usage_error(f"--size {text!r} is out of range")
    return int(value)


def parse_size(text: str) -> int:
    """Bytes from '4G', '800M', '2.5GiB', '1e9'."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1] if number and number[-1] in UNITS else ""
    try:
        size = float(number.removesuffix(unit)) * UNITS[unit]
    except ValueError:
        raise usage_error(f"--max-memory {text!r}: give a size such as 4G or 800M") from None
    if not size > 0:
        raise usage_error(f"--max-memory {text!r}: must be more than zero")
    return int(size)


def run_each(codec: Codec, inputs: list[str], outputs: list[str], work: Work, verb: str, jobs: int,
             quiet: bool) -> None:
    """Run `work` on each input, report failures one line each, carry on with the rest, and sum up: one
    file's own summary, or the batch's."""
    failures = bytes_in = bytes_out = 0
    several = len(inputs) > 1
    started = time.perf_counter()
    with typer.progressbar(length=len(inputs), label=verb, file=sys.stderr, hidden=quiet or not several) as bar:
        for outcome in run_all(codec, work, list(zip(inputs, outputs)), jobs or default_jobs(len(inputs))):
            bar.update(1)
            newline = "\n" if several and not quiet else ""  # off the progress bar's line
            if outcome.error is not None:
                failures += 1
                typer.echo(f"{newline}sdlite: error: {display_name(outcome.source)}: {outcome.error}", err=True)
            for warning in [] if quiet else outcome.warnings:
                typer.echo(f"{newline}sdlite: warning: {display_name(outcome.source)}: {warning}", err=True)
            if outcome.error is None and not several and not quiet:
                typer.echo(f"{display_name(outcome.source)} -> {display_name(outcome.target, output=True)}: "
                           f"{outcome.summary}", err=True)
            bytes_in += outcome.bytes_in
            bytes_out += outcome.bytes_out
    if several and not quiet:
        seconds = time.perf_counter() - started
        done = len(inputs) - failures
        typer.echo(f"sdlite: {verb} {done} of {len(inputs)} files, {bytes_in:,} bytes in, {bytes_out:,} bytes out, "
                   f"{seconds:.1f} s, {done / seconds:.2f} images/s", err=True)
    if failures:
        if several:
            typer.echo(f"sdlite: {failures} of {len(inputs)} files failed", err=True)
        raise typer.Exit(1)


class StepProgress:
    """`name: optimising 12/40` on stderr, once an image has taken more than a second, and a newline after."""

    def __init__(self, name: str, after_seconds: float = 1.0, enabled: bool = True):
        self.name, self.after_seconds, self.enabled, self.shown = name, after_seconds, enabled, False

    def __enter__(self) -> StepProgress:
        self.started = time.monotonic()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.enabled and (self.shown or time.monotonic() - self.started > self.after_seconds):
            self.shown = True
            typer.echo(f"\r{self.name}: optimising {done}/{total}", err=True, nl=False)

    def __exit__(self, *exc) -> None:
        if self.shown:
            typer.echo("", err=True)


def size_summary(width: int, height: int, compressed: int) -> str:
    return f"{width}x{height}, {compressed:,} bytes, {8 * compressed / (width * height):.3f} bpp"


def encode_file(codec: Codec, source: str, target: str, force: bool, show_steps: bool, psnr: Optional[bool],
                **settings) -> tuple[int, int, str]:
    """`show_steps`: the effort's steps for a picture that takes long (a batch has its progress bar instead).
    `psnr`: whether the summary measures the round trip (None: when decoding the picture is cheap)."""
    refuse_existing(target, force)  # before the work, not only at the rename
    data = read_input(source)
    with StepProgress(display_name(source), enabled=show_steps) as progress:
        encoded = codec.encode(data, progress=progress, **settings)
    write_output(target, encoded, force)
    sdc = SdcFile.from_bytes(encoded)
    summary = size_summary(sdc.width, sdc.height, len(encoded))
    if psnr or (psnr is None and codec.decode_seconds(sdc.width, sdc.height) <= CHEAP_DECODE_SECONDS):
        summary += f", PSNR {codec.round_trip_psnr(data, encoded):.2f} dB"
    return len(data), len(encoded), summary


def decode_file(codec: Codec, source: str, target: str, stdin: Optional[bytes], force: bool,
                output_quality: Optional[int]) -> tuple[int, int, str]:
    refuse_existing(target, force)
    data = stdin if source == STDIO else read_input(source)
    image = image_bytes(codec.decode(data), target, output_quality)
    write_output(target, image, force)
    sdc = SdcFile.from_bytes(data)
    return len(data), len(image), f"{size_summary(sdc.width, sdc.height, len(data))}, image {len(image):,} bytes"


@app.command(cls=Command)
def encode(
    inputs: List[str] = typer.Argument(..., metavar="IMAGE", help="Image files ('-' for stdin)."),
    output: Optional[str] = OutputOption,
    quality: int = typer.Option(DEFAULT_QUALITY, "--quality", "-q", min=0, max=100, metavar="Q",
                                help="0 (smallest file) to 100 (best picture)."),
    effort: int = typer.Option(0, "--effort", "-e", min=0, max=MAX_EFFORT, metavar="E",
                               help=f"0 (one pass, fast) to {MAX_EFFORT}: optimise the latent through the decoder "
                                    f"for a better picture at about the same size ({', '.join(map(str, EFFORT_STEPS))} "
                                    f"steps; each takes about four decodes)."),
    size: Optional[str] = typer.Option(None, "--size", metavar="SIZE",
                                       help="Largest file size, e.g. 5KB, 12000, 1.5MB (KB = 1000 bytes, KiB = 1024)."),
    bpp: Optional[float] = typer.Option(None, "--bpp", metavar="BPP", help="Largest size in bits per pixel, e.g. 0.1."),
    method: Optional[str] = typer.Option(None, "--method", metavar="METHOD",
                                         help=f"Coding method: {', '.join(methods.NAMES)} (default "
                                              f"{methods.DEFAULT_METHOD}; learned needs a model with a trained "
                                              f"latent codec)."),
    model: Optional[str] = ModelOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    max_memory: str = MaxMemoryOption,
    tile: Optional[int] = TileOption,
    spill: bool = SpillOption,
    jobs: int = JobsOption,
    force: bool = ForceOption,
    max_pixels: int = MaxPixelsOption,
    psnr: Optional[bool] = typer.Option(None, "--psnr/--no-psnr",
                                        help="Measure the round trip's PSNR for the summary (default: when decoding "
                                             "the picture is cheap, as with TAEF2)."),
    quiet: bool = QuietOption,
) -> None:
    """Compress images into .sdc files."""
    if size is not None and bpp is not None:
        raise usage_error("give --size or --bpp, not both")
    if bpp is not None and not bpp > 0:
        raise usage_error(f"--bpp must be positive, got {bpp}")
    budget = parse_file_size(size) if size is not None else None
    if method is not None:
        check_choice("--method", method, methods.NAMES)
    check_common(device, precision)
    memory = parse_size(max_memory)
    try:
        outputs = output_names(inputs, output, ".sdc")
        refuse_terminal(outputs, force)
        codec = Codec.load(model, device, precision=precision, max_memory=memory, tile=tile, max_pixels=max_pixels,
                           spill=spill)
    except SdliteError as exc:
        fail(str(exc))
    work = functools.partial(encode_file, force=force, show_steps=len(inputs) == 1 and not quiet,
                             psnr=False if quiet else psnr, quality=quality, method=method, size=budget, bpp=bpp,
                             effort=effort)
    run_each(codec, inputs, outputs, work, "encoded", jobs, quiet)


@app.command(cls=Command)
def decode(
    inputs: List[str] = typer.Argument(..., metavar="SDC", help=".sdc files ('-' for stdin)."),
    output: Optional[str] = OutputOption,
    output_quality: Optional[int] = typer.Option(None, "--output-quality", min=0, max=100, metavar="Q",
                                                 help="Quality of a JPEG, WebP or AVIF output, 0 to 100 (default: "
                                                      "Pillow's, 75 for JPEG)."),
    model: Optional[str] = ModelOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    max_memory: str = MaxMemoryOption,
    tile: Optional[int] = TileOption,
    spill: bool = SpillOption,
    jobs: int = JobsOption,
    force: bool = ForceOption,
    max_pixels: int = MaxPixelsOption,
    quiet: bool = QuietOption,
) -> None:
    """Decompress .sdc files into images (PNG by default; the output's suffix picks the format)."""
    check_common(device, precision)
    memory = parse_size(max_memory)
    try:
        outputs = output_names(inputs, output, ".png")
        for target in outputs:  # before any work: a bad suffix must not cost a decode
            image_format(target, output_quality)
        refuse_terminal(outputs, force)
        first = read_input(inputs[0]) if inputs[0] == STDIO else None
        codec = Codec.load(model, device, latent_space=_latent_space_of(first, inputs[0]), precision=precision,
                           max_memory=memory, tile=tile, max_pixels=max_pixels, spill=spill)
    except SdliteError as exc:
        fail(str(exc))
    work = functools.partial(decode_file, stdin=first, force=force, output_quality=output_quality)
    run_each(codec, inputs, outputs, work, "decoded", jobs, quiet)


def check_common(device: str, precision: str) -> None:
    check_choice("--device", device, DEVICES)
    check_choice("--precision", precision, CHOICES)


def _latent_space_of(data: Optional[bytes], name: str) -> Optional[bytes]:
    """The first input's latent space, to pick among several installed models; None if unreadable."""
    try:
        return SdcFile.from_bytes(data if data is not None else read_input(name)).latent_space_id
    except SdliteError:
        return None  # the file's own error is reported when it is decoded


def image_format(target: str, output_quality: Optional[int] = None) -> str:
    """Pillow's format for an output name (PNG for stdout), refusing what cannot be written as asked."""
    suffix = ".png" if target == STDIO else Path(target).suffix.lower()
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None or image_format not in Image.SAVE:
        raise usage_error(f"{target}: unknown image format {suffix!r} (use .png, .webp, .jpg, ...)")
    if output_quality is not None and image_format not in LOSSY_FORMATS:
        raise usage_error(f"--output-quality applies to {', '.join(LOSSY_FORMATS.values())} outputs, "
                          f"not {image_format} ({'stdout' if target == STDIO else target})")
    return image_format


def image_bytes(image: Image.Image, target: str, output_quality: Optional[int] = None) -> bytes:
    image_format_name = image_format(target, output_quality)
    buffer = io.BytesIO()
    settings = {} if output_quality is None else {"quality": output_quality}
    try:
        image.save(buffer, format=image_format_name, **settings)
    except (OSError, ValueError, KeyError) as exc:
        raise SdliteError(f"{target}: cannot write {image_format_name}: {exc}") from None
    return buffer.getvalue()


@app.command(cls=Command)
def info(files: List[str] = typer.Argument(..., metavar="SDC", help=".sdc files ('-' for stdin).")) -> None:
    """Show what is in .sdc files, without decoding them."""
    spaces, precisions = {}, {}
    for folder in installed_models():
        try:
            manifest = load_manifest(folder)
            spaces.setdefault(manifest.latent_space_id, f"{manifest.latent_space} (model {folder.name})")
            precisions.setdefault(manifest.latent_space_id, precision_summary(manifest))
        except SdliteError:
            continue
    failures = 0
    for name in files:
        try:
            data = read_input(name)
            sdc = SdcFile.from_bytes(data)
        except SdliteError as exc:
            typer.echo(f"sdlite: error: {display_name(name)}: {exc}", err=True)
            failures += 1
            continue
        channels, latent_height, latent_width = sdc.latent_shape
        typer.echo(f"{name}:")
        typer.echo(f"  image          {sdc.width}x{sdc.height}")
        typer.echo(f"  file size      {len(data)} bytes, {8 * len(data) / (sdc.width * sdc.height):.4f} bits per pixel")
        typer.echo(f"  latent         {channels} x {latent_height} x {latent_width}")
        typer.echo(f"  latent space   {sdc.latent_space_id.hex()} {spaces.get(sdc.latent_space_id, '(no installed model)')}")
        if sdc.latent_space_id in precisions:
            typer.echo(f"  precisions     {precisions[sdc.latent_space_id]}")
        typer.echo(f"  quality        {sdc.quality} (step {sdc.step:.6g})")
        typer.echo(f"  method         {methods.METHODS[sdc.method].description}")
        typer.echo(f"  payload        {len(sdc.payload)} bytes, model parameters {len(sdc.model_params)} bytes")
    if failures:
        raise typer.Exit(1)


@app.command(cls=Command)
def models() -> None:
    """List the models installed in the models directory."""
    found = installed_models()
    if not found:
        typer.echo(f"no models in {models_dir().absolute()} ($SDLITE_MODELS_DIR, or models/ in the current folder): "
                   f"export one there with `python -m export build`")
    for folder in found:
        try:
            manifest = load_manifest(folder)
        except SdliteError as exc:
            typer.echo(f"{folder.name}: {exc}")
            continue
        typer.echo(f"{folder.name}: latent space {manifest.latent_space}, {manifest.latent_channels} channels at "
                   f"1/{manifest.downsampling_factor}, from {manifest.source}")
        typer.echo(f"  precisions: {precision_summary(manifest)}")
        typer.echo(f"  methods: {', '.join(n for n, m in methods.NAMES.items() if m.available_for(manifest))} "
                   f"(default {methods.DEFAULT_METHOD})")


def precision_summary(manifest) -> str:
    """The model's precisions, each variant with its device and PSNR against float32's decoded picture."""
    variants = [f"{v.precision} for {'/'.join(v.devices)} (encoder {v.psnr_db['encoder']:.1f} dB, "
                f"decoder {v.psnr_db['decoder']:.1f} dB)" for v in manifest.variants]
    return ", ".join(["fp32", *variants])


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"sdlite {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """sdlite: a learned image codec on the Stable Diffusion VAE."""


STOPPED_BY: list[int] = []  # the signal that stopped the run, if one did


def stop(signum: int, frame) -> None:
    """Ctrl-C and SIGTERM unwind, so the temporary file being written is removed."""
    STOPPED_BY.append(signum)
    raise KeyboardInterrupt


# What writing to a full disk, /dev/full or a dead terminal raises; files sdlite writes are reported
# where they are written, so an OSError of these that reaches main() came from stdout.
STDOUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EPIPE}


def stdout_failure() -> Optional[str]:
    """Why stdout cannot take what was printed to it (closed, a full disk, a closed pipe), or None."""
    if sys.stdout is None:
        return None  # closed from the start (`>&-`): Python drops what is printed, and so does sdlite
    try:
        sys.stdout.flush()
    except OSError as exc:
        discard_stdout()
        return f"cannot write to stdout: {exc.strerror or exc}"
    except ValueError:  # closed by the program itself
        return None
    return None


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        status = app(prog_name="sdlite", standalone_mode=False)  # typer turns a stop into status 130
        if not STOPPED_BY:
            failure = stdout_failure()
            if failure:
                typer.echo(f"sdlite: error: {failure}", err=True)
                sys.exit((status if isinstance(status, int) else 0) or 1)
            sys.exit(status if isinstance(status, int) else 0)
    except getattr(parser_errors, "NoArgsIsHelpError", ()) as exc:  # `sdlite` alone: the help (click >= 8.2)
        typer.echo(exc.ctx.get_help(), err=True)
        sys.exit(2)
    except parser_errors.UsageError as exc:  # the parser's (an unknown option, -q 150) and ours: one line
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""  # the parser's have one
        typer.echo(f"sdlite: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        pass
    except Exception as exc:
        # A signal raised in the middle of a lock's bookkeeping can surface as another error: still a stop.
        if not STOPPED_BY:
            failure = stdout_failure()
            if failure is None and isinstance(exc, OSError) and exc.errno in STDOUT_ERRNOS:
                discard_stdout()  # the listing commands print straight to stdout; what they print it fails on
                failure = f"cannot write to stdout: {exc.strerror}"
            if failure:
                typer.echo(f"sdlite: error: {failure}", err=True)
                sys.exit(1)
            # A bug of ours: still one line for the user, and a way to see more.
            typer.echo(f"sdlite: internal error: {type(exc).__name__}: {exc} (please report it)", err=True)
            sys.exit(2)
    signum = STOPPED_BY[0] if STOPPED_BY else signal.SIGINT
    discard_stdout()  # a stopped run's half-written stdout is not flushed at exit (which could fail, too)
    typer.echo("sdlite: terminated" if signum == signal.SIGTERM else "sdlite: interrupted", err=True)
    sys.exit(128 + signum)


if __name__ == "__main__":
    main()
