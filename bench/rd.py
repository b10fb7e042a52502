"""`python -m bench rd`: rate against distortion of sdlite's methods and the classic codecs.

Per image: sdlite's learned method (where the model has a latent codec), the predictive method and the
naive baseline (uniform) at each target bpp through `--size` rate control (so each point is the largest file not above the target), the palette
method at 256, 128 and 64 entries, and JPEG, WebP, AVIF (Pillow) and JPEG XL (pillow-jxl-plugin) over a
sweep of their quality settings. Every point is decoded and scored (PSNR, MS-SSIM, SSIMULACRA2,
butteraugli). Results go to bench/results/rd/: rd.csv (every point), rd.md (tables at fixed bpp, the
Bjontegaard rates, the palette comparison, rate-control accuracy, timings) and rd_<metric>.png.
Table values at a fixed bpp are interpolated per image (metric against log bpp) between that
image's points, and shown only when every image's points reach that bpp.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import multiprocessing
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from sdlite import Codec, images, methods, ratecontrol
from sdlite.errors import SdliteError

from . import metrics

import pillow_jxl  # noqa: F401,E402 (registers JPEG XL with Pillow)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "kodak"
DEFAULT_MODEL = ROOT / "models" / "taef2"
DEFAULT_OUT = ROOT / "bench" / "results" / "rd"
TARGETS_BPP = (0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6)
# Encoder efforts take seconds a step on a whole Kodak picture: their curves cover the range where
# sdlite meets JPEG, which is also where they overlap effort 0's for the BD-rate.
EFFORT_TARGETS_BPP = (0.2, 0.3, 0.45)
PALETTE_QUALITIES = (100, 75, 50)  # 256, 128 and 64 entries; 256 is the seed's setting
# Pillow quality sweeps that cover about 0.05 to 0.6 bpp on Kodak (each codec as low as it can go).
CLASSIC = {
    "jpeg": ("JPEG", (1, 3, 6, 12, 25, 50), {}),
    "webp": ("WEBP", (0, 2, 5, 10, 20, 35, 55), {"method": 6}),
    "avif": ("AVIF", (1, 6, 12, 20, 30, 42, 55), {}),
    "jxl": ("JXL", (1, 6, 12, 20, 30, 42, 55), {}),
}
LARGEST_BPP_SCORED = 0.8
METRICS = {  # name: (label, higher is better)
    "psnr": ("PSNR (dB)", True),
    "ms_ssim": ("MS-SSIM", True),
    "ssimulacra2": ("SSIMULACRA2", True),
    "butteraugli": ("butteraugli (max-norm)", False),
}
METHOD_ORDER = ("learned", "predictive", "uniform", "palette", "jpeg", "webp", "avif", "jxl")
STEPPED = ("learned", "predictive", "uniform")  # the methods measured at each target bpp

_codec: Codec | None = None


def _worker_codec(model: Path) -> Codec:
    global _codec
    if _codec is None:
        _codec = Codec.load(model)
    return _codec


def effort_method(effort: int) -> str:
    return f"predictive effort {effort}"


def measure_image(job: tuple[Path, Path, bool, tuple[float, ...], tuple[int, ...]]) -> list[dict]:
    path, model, perceptual, targets, efforts = job
    codec = _worker_codec(model)
    picture = images.open_image(path)
    width, height = picture.size
    pixels = width * height
    rows = []

    def record(method: str, setting, data: bytes, decoded: Image.Image, **extra) -> None:
        rows.append({"image": path.name, "method": method, "setting": setting, "bytes": len(data),
                     "bpp": 8 * len(data) / pixels, **extra,
                     **metrics.all_metrics(picture, decoded, perceptual)})

    started = time.perf_counter()
    latent = codec.encode_latent(picture)
    encoder_seconds = time.perf_counter() - started
    for name in [m for m in STEPPED if methods.by_name(m).available_for(codec.manifest)]:
        coder = codec.method(name)
        for target in targets:
            budget = int(target * pixels / 8)
            started = time.perf_counter()
            try:
                data = ratecontrol.largest_within(lambda q: codec.pack(latent, width, height, q, coder), budget)
            except SdliteError:
                continue  # the smallest file of this method is above the target
            encode_seconds = encoder_seconds + time.perf_counter() - started
            started = time.perf_counter()
            decoded = codec.decode(data)
            record(name, target, data, decoded, target_bpp=target, within_3pct=0.97 * budget <= len(data) <= budget,
                   encode_s=encode_seconds, decode_s=time.perf_counter() - started)
    for effort in efforts:  # the whole encode, search included, at each target through rate control
        for target in [t for t in targets if t in EFFORT_TARGETS_BPP]:
            started = time.perf_counter()
            try:
                data = codec.encode(picture, method="predictive", bpp=target, effort=effort)
            except SdliteError:
                continue
            encode_seconds = time.perf_counter() - started
            started = time.perf_counter()
            decoded = codec.decode(data)
            budget = int(target * pixels / 8)
            record(effort_method(effort), target, data, decoded, target_bpp=target,
                   within_3pct=0.97 * budget <= len(data) <= budget, encode_s=encode_seconds,
                   decode_s=time.perf_counter() - started)
    for quality in PALETTE_QUALITIES:
        started = time.perf_counter()
        data = codec.pack(latent, width, height, quality, codec.method("palette"))
        encode_seconds = encoder_seconds + time.perf_counter() - started
        started = time.perf_counter()
        decoded = codec.decode(data)
        record("palette", quality, data, decoded, encode_s=encode_seconds, decode_s=time.perf_counter() - started)
    for name, (image_format, qualities, options) in CLASSIC.items():
        for quality in qualities:
            buffer = io.BytesIO()
            picture.save(buffer, format=image_format, quality=quality, **options)
            if 8 * buffer.tell() / pixels > LARGEST_BPP_SCORED:
                break
            record(name, quality, buffer.getvalue(), Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return rows


def _value(row: dict, metric: str) -> float:
    """The metric as a number that grows with quality (for BD-rates and interpolation)."""
    value = float(row[metric])
    if metric == "butteraugli":
        return -value
    if metric == "ms_ssim":
        return -10 * math.log10(max(1 - value, 1e-12))
    return value


def _by(rows: list[dict], *keys: str) -> dict:
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def average_curves(rows: list[dict], image_count: int) -> dict[str, list[dict]]:
    """Per method, the mean bpp and metrics of each setting that every image has."""
    curves = defaultdict(list)
    for (method, setting), group in _by(rows, "method", "setting").items():
        if len(group) == image_count:
            point = {"setting": setting, "bpp": np.mean([r["bpp"] for r in group])}
            for metric in METRICS:
                point[metric] = float(np.mean([float(r[metric]) for r in group]))
                point["value_" + metric] = float(np.mean([_value(r, metric) for r in group]))
            curves[method].append(point)
    order = [m for m in METHOD_ORDER if m in curves] + sorted(set(curves) - set(METHOD_ORDER))
    return {m: sorted(curves[m], key=lambda p: p["bpp"]) for m in order}


def at_bpp(rows: list[dict], method: str, metric: str, bpp: float, images_: list[str]) -> float:
    """The mean over images of the metric interpolated at `bpp` (against log bpp); NaN unless every
    image's points reach it (3% of slack, for rate-controlled points just below their target)."""
    values = []
    for image in images_:
        points = sorted((r["bpp"], float(r[metric])) for r in rows if r["method"] == method and r["image"] == image)
        if not points or not points[0][0] / 1.03 <= bpp <= points[-1][0] * 1.03:
            return float("nan")
        rates, scores = zip(*points)
        values.append(np.interp(math.log(bpp), np.log(rates), scores))
    return float(np.mean(values))


def palette_savings(rows: list[dict], images_: list[str]) -> list[tuple[str, float, int]]:
    """Per palette setting: bytes of the default method at the palette's PSNR, as a fraction of the
    palette's bytes (mean over images), and on how many images that PSNR lay inside the default's points."""
    results = []
    for setting in PALETTE_QUALITIES:
        ratios, inside = [], 0
        for image in images_:
            palette = [r for r in rows if r["method"] == "palette" and r["image"] == image and r["setting"] == setting]
            ours = sorted((float(r["psnr"]), math.log(r["bytes"])) for r in rows
                          if r["method"] == "predictive" and r["image"] == image)
            if not palette or len(ours) < 2:
                continue
            target = float(palette[0]["psnr"])
            psnrs, log_bytes = zip(*ours)
            inside += psnrs[0] <= target <= psnrs[-1]
            # Outside the default's range np.interp holds the end value: for a palette PSNR below our
            # lowest point that overstates our bytes, so the saving reported is a lower bound.
            ratios.append(math.exp(np.interp(target, psnrs, np.maximum.accumulate(log_bytes))) / palette[0]["bytes"])
        results.append((f"{setting}", float(np.mean(ratios)) if ratios else float("nan"), inside))
    return results


def write_report(rows: list[dict], out: Path, command: str, seconds: float, targets: tuple[float, ...]) -> Path:
    image_names = sorted({r["image"] for r in rows})
    curves = average_curves(rows, len(image_names))
    lines = [f"# RD benchmark: {len(image_names)} images", "", f"Command: `{command}`  ", f"Run time: {seconds / 60:.1f} min", ""]
    for metric, (label, _) in METRICS.items():
        lines += [f"## {label} at fixed bpp", "", "| method | " + " | ".join(f"{b:g}" for b in targets) + " |",
                  "|---" * (len(targets) + 1) + "|"]
        for method in curves:
            cells = [at_bpp(rows, method, metric, b, image_names) for b in targets]
            lines.append(f"| {method} | " + " | ".join("—" if math.isnan(c) else f"{c:.3f}" if metric == "ms_ssim"
                                                       else f"{c:.2f}" for c in cells) + " |")
        lines.append("")
    lines += ["## BD-rate (%): the row's method against the column's method (negative: the row needs fewer bits)", ""]
    for metric, (label, _) in METRICS.items():
        names = list(curves)
        lines += [f"### {label}", "", "| vs | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for a in names:
            cells = []
            for b in names:
                value = metrics.bd_rate([p["bpp"] for p in curves[b]], [p["value_" + metric] for p in curves[b]],
                                        [p["bpp"] for p in curves[a]], [p["value_" + metric] for p in curves[a]])
                cells.append("" if a == b else "—" if math.isnan(value) else f"{value:+.1f}")
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Default method against the palette method at equal PSNR", "",
              "| palette quality (entries) | default's bytes / palette's bytes | images inside the default's range |",
              "|---|---|---|"]
    for setting, ratio, inside in palette_savings(rows, image_names):
        entries = 2 ** round(math.log2(max(2, 256 * 2 ** ((int(setting) - 100) / 10))))
        lines.append(f"| {setting} ({entries}) | {ratio:.3f} ({(1 - ratio) * 100:.0f}% fewer bytes) | {inside}/{len(image_names)} |")
    lines += ["", "## Rate control (`--size`, largest file not above the target)", "",
              "| method | target bpp | mean bpp | within 3% below the target |", "|---|---|---|---|"]
    for (method, target), group in sorted(_by([r for r in rows if r.get("target_bpp") not in (None, "")],
                                              "method", "target_bpp").items()):
        met = sum(str(r["within_3pct"]) == "True" for r in group)
        lines.append(f"| {method} | {target:g} | {np.mean([r['bpp'] for r in group]):.4f} | {met}/{len(group)} |")
    lines += ["", "## Time per image (s, this machine)", "", "| method | encode (graph + rate control) | decode |", "|---|---|---|"]
    for method in curves:
        group = [r for r in rows if r["method"] == method and r.get("encode_s") not in (None, "")]
        if group:
            lines.append(f"| {method} | {np.mean([r['encode_s'] for r in group]):.2f} | {np.mean([r['decode_s'] for r in group]):.2f} |")
    lines += ["", "Plots: " + ", ".join(f"`rd_{m}.png`" for m in METRICS), ""]
    report = out / "rd.md"
    report.write_text("\n".join(lines))
    plot(curves, out)
    return report


def plot(curves: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric, (label, _) in METRICS.items():
        figure, axes = plt.subplots(figsize=(7, 5))
        for method, points in curves.items():
            values = [p[metric] for p in points]
            if np.all(np.isnan(values)):
                continue
            style = "--s" if method in CLASSIC else "-o"  # sdlite's own curves solid, the classic codecs' dashed
            axes.plot([p["bpp"] for p in points], values, style, label=method, markersize=4)
        axes.set_xlabel("bits per pixel")
        axes.set_ylabel(label)
        axes.set_xlim(0, 0.8)
        axes.grid(alpha=0.3)
        axes.legend()
        axes.set_title(f"{label} against rate, mean over images")
        figure.tight_layout()
        figure.savefig(out / f"rd_{metric}.png", dpi=110)
        plt.close(figure)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rd", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of test pictures (default: Kodak)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported model folder (default: models/taef2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="four images, three targets")
    parser.add_argument("--no-perceptual", action="store_true", help="PSNR and MS-SSIM only (fast)")
    parser.add_argument("--jobs", type=int, default=min(2, multiprocessing.cpu_count()))
    parser.add_argument("--efforts", default="",
                        help="also the predictive method at these encoder efforts, e.g. 1,3 (slow: whole encodes)")
    args = parser.parse_args(argv)
    efforts = tuple(int(e) for e in args.efforts.split(",") if e)
    if not (args.model / "manifest.json").is_file():
        print(f"bench rd: no model at {args.model} (python -m export build --model ../shared/models/taef2)", file=sys.stderr)
        return 1
    paths = sorted(p for p in args.images.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".ppm"))
    if not paths:
        print(f"bench rd: no pictures in {args.images}", file=sys.stderr)
        return 1
    targets = TARGETS_BPP
    if args.quick:
        paths, targets = paths[:: max(1, len(paths) // 4)][:4], (0.1, 0.3, 0.6)
    if metrics.BUTTERAUGLI is None:
        print("bench rd: butteraugli_main not found (apt-get install libjxl-devtools): butteraugli skipped", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [(p, args.model, not args.no_perceptual, targets, efforts) for p in paths]
    rows = []
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for done, image_rows in enumerate(pool.imap(measure_image, jobs), 1):
            rows += image_rows
            print(f"[{done}/{len(jobs)}] {image_rows[0]['image']}  {time.perf_counter() - started:.0f} s", file=sys.stderr)
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("image", "method", "setting", "bytes", "bpp"), k))
    with open(args.out / "rd.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    command = "python -m bench rd " + " ".join(argv)
    report = write_report(rows, args.out, command.strip(), time.perf_counter() - started, targets)
    print(report.read_text())
    print(f"wrote {args.out}/rd.csv, {report} and the plots in {args.out}", file=sys.stderr)
    return 0
