"""`python -m bench huge`: a 4096x4096 picture encoded and decoded in tiles, with the process's peak memory.

Run it in a process of its own (the peak RSS it reports is the whole process's high-water mark).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from export.precision import psnr

from .speed import KODAK, peak_rss

SIDE = 4096


def picture(side: int) -> Image.Image:
    """A Kodak photo scaled up to side x side where it is at hand, else made-up content."""
    if KODAK.is_file():
        return Image.open(KODAK).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    from export.precision import synthetic_picture

    pixels = synthetic_picture(side, seed=0)[0].transpose(1, 2, 0)
    return Image.fromarray(np.rint(pixels * 255).astype(np.uint8), "RGB")


def main(folder: Path, precision: str, max_memory: int, side: int = SIDE, quality: int = 50,
         spill: bool = False) -> str:
    import sdlite

    codec = sdlite.Codec.load(folder, precision=precision, max_memory=max_memory, spill=spill)
    image = picture(side)
    latent_side = side // codec.manifest.downsampling_factor
    started = time.perf_counter()
    data = codec.encode(image, quality=quality)
    encoded = time.perf_counter()
    decoded = codec.decode(data)
    finished = time.perf_counter()
    quality_db = psnr_8bit(decoded, image)
    line = (f"{side}x{side} {folder.name} {codec.networks.precision_of('encoder')}/{codec.networks.precision_of('decoder')}, "
            f"--max-memory {max_memory / 2**30:g} GiB: encoder tiles {codec.networks.tiling('encoder', latent_side, latent_side)}, "
            f"decoder tiles {codec.networks.tiling('decoder', latent_side, latent_side)}; encode {encoded - started:.0f} s, "
            f"decode {finished - encoded:.0f} s, {len(data)} bytes, PSNR {quality_db:.2f} dB against the input, "
            f"peak RSS {peak_rss() / 2**30:.2f} GiB")
    print(line, file=sys.stderr)
    return line


def psnr_8bit(a: Image.Image, b: Image.Image) -> float:
    """PSNR of two 8-bit pictures, summed a row at a time: float copies of a 4096x4096 picture would
    take more than the codec itself, and count in the peak RSS that this benchmark reports."""
    x, y = np.asarray(a), np.asarray(b)
    squared = sum(int(np.square(x[row].astype(np.int32) - y[row]).sum()) for row in range(x.shape[0]))
    return 99.0 if squared == 0 else float(10 * np.log10(255**2 * x.size / squared))


def agreement(folder: Path, precision: str, tile: int | None, side: int | None = None,
              max_memory: int | None = None) -> str:
    """PSNR between tiled and whole runs on a picture small enough to run whole (a Kodak photo, or one
    scaled to side x side), with their times: the codec's tiled encode and decode (segments in step
    where the graph has group norms and they fit, in memory or else in files), and each tile run alone
    (as the codec does where they fit neither). Tiles of `tile` cells, or
    as `max_memory` has them. A tiled encode is judged by its latent decoded whole. For a variant, the
    codec's tiled run and the whole variant run are also held against the whole float32 run: rounded
    graphs are chaotic (a last-bit change flips a rounding, whose step flips more), so tiles and whole
    differ in which roundings they make, and what matters is how far each is from float32."""
    import sdlite
    from sdlite import images
    from sdlite.codec import DEFAULT_MAX_MEMORY
    from sdlite.networks.tiling import run_tiled

    whole = sdlite.Codec.load(folder, precision=precision, max_memory=1 << 50)
    tiled = sdlite.Codec.load(folder, precision=precision, tile=tile, max_memory=max_memory or DEFAULT_MAX_MEMORY,
                              spill=True)
    float32 = sdlite.Codec.load(folder, precision="fp32", max_memory=1 << 50)
    photo = picture(side) if side or not KODAK.is_file() else Image.open(KODAK).convert("RGB")
    pixels = images.to_array(photo, 8)
    latent = whole.networks.run_encoder(pixels)
    reference = whole.networks.run_decoder(latent)
    factor = tiled.manifest.downsampling_factor
    grid = latent.shape[2:]
    tilings = {role: tiled.networks.tiling(role, *grid) for role in ("decoder", "encoder")}
    if None in tilings.values():
        raise sdlite.SdliteError(f"a {photo.width}x{photo.height} picture runs whole within the budget: give --tile")
    cases = {  # role: input, codec's tiled run, tiles alone, judged as, the whole float32 run judged so
        "decoder": (latent, tiled.networks.run_decoder, lambda z: run_tiled(tiled.networks.decoder, z, tilings["decoder"], 1, factor),
                    lambda x: x, lambda: float32.networks.run_decoder(latent)),
        "encoder": (pixels, tiled.networks.run_encoder, lambda x: run_tiled(tiled.networks.encoder, x, tilings["encoder"], factor, 1),
                    whole.networks.run_decoder, lambda: whole.networks.run_decoder(float32.networks.run_encoder(pixels))),
    }
    parts = []
    for role, (array, codec_run, alone_run, judged, float32_run) in cases.items():
        figures = []
        for run in (codec_run, alone_run):
            run(array)  # the first run loads the sessions
            started = time.perf_counter()
            output = run(array)
            figures.append(f"{psnr(judged(output), reference):.2f} dB in {time.perf_counter() - started:.1f} s")
            if run is codec_run and tiled.networks.precision_of(role) != "fp32":
                float32_output = float32_run()
                figures[-1] += (f" (against float32 whole: tiled {psnr(judged(output), float32_output):.2f} dB, "
                                f"whole {psnr(reference, float32_output):.2f} dB)")
        chosen = tilings[role]
        how = ("tiles alone" if not chosen.in_step else
               "segments in step, held in files" if chosen.spilled else "segments in step")
        parts.append(f"tiled {role} vs whole {figures[0]} ({how}, tiles of {chosen.tile}), tiles alone {figures[1]}")
    line = f"{folder.name} {precision}, picture {pixels.shape[3]}x{pixels.shape[2]}: " + "; ".join(parts)
    print(line, file=sys.stderr)
    return line
