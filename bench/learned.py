"""`python -m bench learned`: what the learned method costs beside the VAE decoder it feeds.

On one picture (a Kodak photo, 768x512), at a middle quality: the decoder graph's time, and the learned
method's own decoding work (its entropy decoding, the integer hyper-synthesis and the synthesis graph),
each the best of a few warm runs, with the share of the decoder's time; the encoder side is reported
too (analysis and hyper-analysis graphs, integer network, entropy coding).
"""

from __future__ import annotations

import time
from pathlib import Path

import sdlite
from sdlite import images
from sdlite.container import SdcFile


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main(model: Path, picture: Path, quality: float, repeats: int, precision: str, out: Path) -> str:
    codec = sdlite.Codec.load(model, precision=precision)
    image = images.open_image(picture)
    latent = codec.encode_latent(image)
    method = codec.method("learned")
    data = codec.pack(latent, *image.size, quality, method)
    sdc = SdcFile.from_bytes(data)
    code = method.code
    codec.decode(data)  # sessions made and warmed outside the timings
    decoder = best_of(repeats, lambda: codec.networks.run_decoder(latent[None]))
    levels = best_of(repeats, lambda: code.synthesis_input(sdc.model_params, sdc.payload, sdc.latent_shape))
    synthesis_input = code.synthesis_input(sdc.model_params, sdc.payload, sdc.latent_shape)
    synthesis = best_of(repeats, lambda: code.run_graph("synthesis", synthesis_input[None]))
    encode = best_of(repeats, lambda: code.encode(latent, quality))
    own = levels + synthesis
    lines = [f"# The learned method's cost: {picture.name} ({image.size[0]}x{image.size[1]}), quality {quality:g}, "
             f"{precision} decoder, {len(data)} bytes ({8 * len(data) / (image.size[0] * image.size[1]):.3f} bpp)", "",
             "| part | seconds | share of the decoder's time |", "|---|---|---|",
             f"| VAE decoder graph | {decoder:.3f} | 100% |",
             f"| entropy decoding + integer hyper-synthesis + dequantization | {levels:.3f} | "
             f"{100 * levels / decoder:.1f}% |",
             f"| synthesis graph | {synthesis:.3f} | {100 * synthesis / decoder:.1f}% |",
             f"| **the learned method's decoding, in all** | **{own:.3f}** | **{100 * own / decoder:.1f}%** |",
             f"| its encoding (analysis, hyper-analysis, integer network, entropy coding) | {encode:.3f} | "
             f"{100 * encode / decoder:.1f}% |", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return "\n".join(lines)
