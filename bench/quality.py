"""`python -m bench quality`: what each quality setting gives on a set of photos (docs/CLI.md's table).

Per quality: the mean bits per pixel (with its range over the photos), bytes and PSNR of the default
method at effort 0, and the PSNR of the JPEG (Pillow) at the largest quality whose file is not larger
than sdlite's, over the photos where JPEG can make a file that small.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from sdlite import Codec, images, methods


def jpeg_psnr_within(picture: Image.Image, budget: int) -> float:
    """NaN where even Pillow's quality 1 is larger than `budget`."""
    best = None
    for quality in range(1, 101):
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=quality)
        if buffer.tell() > budget:
            break
        best = buffer.getvalue()
    return math.nan if best is None else images.psnr(Image.open(io.BytesIO(best)).convert("RGB"), picture)


def main(model: Path, folder: Path, qualities: list[int], precision: str) -> None:
    codec = Codec.load(model, precision=precision)
    coder = codec.method()
    rows: dict[int, list[tuple[int, float, float, float]]] = {quality: [] for quality in qualities}
    for path in sorted(folder.glob("*.png")):
        picture = images.open_image(path)
        width, height = picture.size
        latent = codec.encode_latent(picture)
        for quality in qualities:
            data = codec.pack(latent, width, height, quality, coder)
            rows[quality].append((len(data), 8 * len(data) / (width * height),
                                  images.psnr(codec.decode(data), picture), jpeg_psnr_within(picture, len(data))))
    print(f"{model}, precision {codec.networks.precision_of('encoder')} encoder / {codec.networks.precision_of('decoder')} decoder, "
          f"{len(rows[qualities[0]])} photos from {folder}")
    print("| quality | bits per pixel (mean; min-max) | bytes (mean) | PSNR | JPEG of that size |")
    print("|---|---|---|---|---|")
    for quality in qualities:
        table = np.array(rows[quality])
        jpeg = table[:, 3][np.isfinite(table[:, 3])]
        jpeg_text = f"{jpeg.mean():.2f} dB ({len(jpeg)} of {len(table)} photos)" if len(jpeg) else "none that small"
        print(f"| {quality} | {table[:, 1].mean():.3f} ({table[:, 1].min():.3f}-{table[:, 1].max():.3f}) | "
              f"{table[:, 0].mean():,.0f} | {table[:, 2].mean():.2f} dB | {jpeg_text} |")
