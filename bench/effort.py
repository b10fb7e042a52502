"""`python -m bench.effort`: rate-distortion curves and encode time for each encoder effort level.

Every image is encoded at each quality and effort, decoded, and measured (PSNR on the RGB pixels,
bits per pixel of the whole .sdc file, encode wall time), all in one run. Each effort's curve is then
compared with effort 0's by its BD-rate on PSNR (negative: fewer bytes for the same PSNR), and JPEG
(Pillow, 4:2:0) is measured on the same pictures for reference.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import sdlite
from sdlite import methods

from . import metrics


def center_crop(image: Image.Image, side: int) -> Image.Image:
    if not side:
        return image
    width, height = image.size
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def bd_rate(reference: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """BD-rate in percent of `test` against `reference`, both lists of (bpp, PSNR) points."""
    return metrics.bd_rate(*zip(*reference), *zip(*test))


def psnr(a: Image.Image, b: Image.Image) -> float:
    return metrics.psnr(np.asarray(a), np.asarray(b))


def psnr_at(points: list[tuple[float, float]], bpp: float) -> float:
    """PSNR at `bpp`, interpolated on log-rate; nan (printed "nan") outside the measured range."""
    points = sorted(points)
    rates = np.log([p[0] for p in points])
    if not rates[0] <= np.log(bpp) <= rates[-1]:
        return float("nan")
    return float(np.interp(np.log(bpp), rates, [p[1] for p in points]))


def percent(value: float) -> str:
    return "n/a (no common PSNR range)" if np.isnan(value) else f"{value:+.1f}%"


def jpeg_curve(pictures: list[Image.Image], qualities: list[int]) -> list[tuple[float, float]]:
    curve = []
    for quality in qualities:
        rates, psnrs = [], []
        for picture in pictures:
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=quality)
            rates.append(8 * buffer.tell() / (picture.width * picture.height))
            psnrs.append(psnr(picture, Image.open(buffer).convert("RGB")))
        curve.append((float(np.mean(rates)), float(np.mean(psnrs))))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.effort", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--images", type=Path, required=True, help="folder of test pictures (PNG)")
    parser.add_argument("--crop", type=int, default=256, help="center crop side in pixels (0: whole pictures)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N pictures (0: all)")
    parser.add_argument("--qualities", default="5,20,35,50")
    parser.add_argument("--efforts", default="0,1,2,3,5")
    parser.add_argument("--method", default="predictive", help="coding method (uniform or predictive)")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args()

    paths = sorted(args.images.glob("*.png"))[: args.limit or None]
    pictures = [center_crop(Image.open(p).convert("RGB"), args.crop) for p in paths]
    qualities = [int(q) for q in args.qualities.split(",")]
    efforts = [int(e) for e in args.efforts.split(",")]
    codec = sdlite.Codec.load(args.model)
    codec.encode(pictures[0], method=args.method, effort=max(efforts))  # sessions made and warmed outside the timings

    lines = [f"model {codec.manifest.name}, method {args.method}, {len(pictures)} pictures from {args.images} "
             f"({'whole' if not args.crop else f'{args.crop}x{args.crop} center crops'}); "
             f"means over pictures", "",
             "| effort | quality | bpp | PSNR dB | encode s/picture |", "|---|---|---|---|---|"]
    curves: dict[int, list[tuple[float, float]]] = {}
    times: dict[int, list[float]] = {}
    # Effort 0 also at finer qualities, so that its curve reaches the PSNR of the higher efforts' and
    # the BD-rate has a common range to integrate over.
    finer = sorted({min(100, max(qualities) + extra) for extra in (10, 20, 30)} - set(qualities))
    for effort in efforts:
        for quality in qualities + (finer if effort == efforts[0] else []):
            rates, psnrs, seconds = [], [], []
            for picture in pictures:
                started = time.perf_counter()
                data = codec.encode(picture, quality=quality, method=args.method, effort=effort)
                seconds.append(time.perf_counter() - started)
                rates.append(8 * len(data) / (picture.width * picture.height))
                psnrs.append(psnr(picture, codec.decode(data)))
            curves.setdefault(effort, []).append((float(np.mean(rates)), float(np.mean(psnrs))))
            times.setdefault(effort, []).extend(seconds)
            lines.append(f"| {effort} | {quality} | {np.mean(rates):.4f} | {np.mean(psnrs):.2f} | {np.mean(seconds):.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)

    jpeg = jpeg_curve(pictures, [10, 20, 30, 40, 50, 60, 75, 90])
    lines += ["", "| effort | BD-rate vs effort 0 (PSNR) | encode s/picture | PSNR at 0.22 / 0.33 bpp |",
              "|---|---|---|---|"]
    for effort in efforts:
        at = " / ".join(f"{psnr_at(curves[effort], bpp):.2f}" for bpp in (0.22, 0.33))
        lines.append(f"| {effort} | {percent(bd_rate(curves[efforts[0]], curves[effort]))} | {np.mean(times[effort]):.2f} | {at} |")
    at = " / ".join(f"{psnr_at(jpeg, bpp):.2f}" for bpp in (0.22, 0.33))
    lines.append(f"| JPEG | {percent(bd_rate(curves[efforts[0]], jpeg))} | | {at} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
