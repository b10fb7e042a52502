"""Entropy decoding speed, in symbols per second, for each method: on the latents of Kodak photos at
several qualities, and on hostile files built for the most decoding work a file can ask for.

    python -m bench entropy --model DIR [--images 4] [--repeats 3]

Times only the entropy decoder (model.decompress), on one core, best of --repeats.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

import sdlite
from sdlite import methods, rangedecode
from sdlite.container import SdcFile
from sdlite.methods.uniform import AdaptiveCategorical
from sdlite.methods.predictive import PredictiveModel

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
QUALITIES = (50, 90, 100)


def best_seconds(decode, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        decode()
        best = min(best, time.perf_counter() - started)
    return best


def alphabet(model) -> int:
    if isinstance(model, PredictiveModel):
        return 2 * model.largest + 1
    if isinstance(model, AdaptiveCategorical):
        return int(model.sizes.max())
    return len(model.palette)


def real_rows(codec: sdlite.Codec, pictures: list[Path], repeats: int) -> list[str]:
    latents = [(codec.encode_latent(Image.open(p).convert("RGB")), Image.open(p).size) for p in pictures]
    rows = []
    for name in methods.NAMES:
        for quality in QUALITIES:
            symbols = seconds = 0.0
            largest = 0
            for latent, (width, height) in latents:
                sdc = SdcFile.from_bytes(codec.pack(latent, width, height, quality, methods.by_name(name)))
                model = methods.METHODS[sdc.method].from_bytes(sdc.model_params, sdc.latent_shape)
                seconds += best_seconds(lambda: model.decompress(sdc.payload, sdc.latent_shape), repeats)
                symbols += np.prod(sdc.latent_shape[1:]) * (1 if name == "palette" else sdc.latent_shape[0])
                largest = max(largest, alphabet(model))
            rows.append(f"| {name} | Kodak q{quality} | {int(symbols):,} | {largest} | {seconds * 1e3:.1f} | "
                        f"{symbols / seconds / 1e6:.1f} |")
    return rows


def hostile_rows(channels: int, repeats: int) -> list[str]:
    """4096x4096 at 1/8 with the widest alphabets each method allows: the most symbols and tables a small
    file can ask for. A payload of zero words decodes every symbol (to the first of its alphabet) before
    it is found to end wrong."""
    shape = (channels, 512, 512)
    payload = bytes(64)
    cases = [("uniform", AdaptiveCategorical(np.full(channels, -2047), np.full(channels, 4095))),
             ("palette", AdaptiveCategorical(np.zeros(1), np.array([256]))),
             ("predictive", PredictiveModel(np.zeros(channels), np.zeros(channels), np.zeros((channels, 3)),
                                            np.zeros(channels), 255))]
    # The most table work the bound lets a file ask for: a 1024x16384 picture of 4095-level channels.
    at_bound = (channels, rangedecode.MAX_TABLE_ENTRIES // (channels * 4096), 128)
    cases.append(("uniform at the bound", cases[0][1]))
    rows = []
    for name, model in cases:
        case_shape = {"palette": (1, *shape[1:]), "uniform at the bound": at_bound}.get(name, shape)

        def decode() -> None:
            try:
                model.decompress(payload, case_shape)
            except sdlite.SdliteError as exc:  # after every symbol: the payload ends wrong
                assert "cannot be decoded" not in str(exc)

        seconds = best_seconds(decode, repeats)
        symbols = int(np.prod(case_shape))
        entries = (rangedecode.predictive_table_entries(case_shape, model.largest) if name == "predictive"
                   else rangedecode.adaptive_table_entries(case_shape, model.sizes))
        picture = f"{case_shape[2] * 8}x{case_shape[1] * 8}"
        rows.append(f"| {name} | hostile {picture}, {entries:,} table entries | {symbols:,} | {alphabet(model)} | "
                    f"{seconds * 1e3:.1f} | {symbols / seconds / 1e6:.1f} |")
    return rows


def main(model: Path, images: int, repeats: int, out: Path) -> None:
    codec = sdlite.Codec.load(model)
    pictures = sorted(KODAK.glob("*.png"))[:images]
    lines = ["| method | latents | symbols | largest alphabet | decode ms | M symbols/s |",
             "|---|---|---|---|---|---|"]
    lines += real_rows(codec, pictures, repeats) if pictures else []
    lines += hostile_rows(codec.manifest.latent_channels, repeats)
    table = "\n".join(lines)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n", encoding="utf-8")
