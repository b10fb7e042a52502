"""`python -m export build`: load a VAE, write its graphs and manifest, and check them."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from sdlite.networks.inference import Graph as Runner
from sdlite.manifest import MANIFEST_NAME, Graph, Manifest, Segmented, file_sha256

from .graphs import DECODER_IO, ENCODER_IO, export_graph
from .latent_codec_export import check_round_trip, export_latent_codec, runner_for, shipped_for
from .calibration import load_photos
from .memory import memory_model
from .precision import build_variant, pictures_for, timed
from .segments import check_segments, split
from .sensitivity import calibration_pictures, channel_sensitivity
from .sources import load_model
from .verify import check_gradient_graph, check_graph, sample_image
from .vjp import VJP_INPUTS, VJP_OUTPUTS, export_vjp_graph


def quiet_libraries() -> None:
    """Keep the libraries' notices (accelerate hints, torchvision ops skipped) out of the build's output."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def progress(step: int, total: int, message: str) -> None:
    print(f"[{step}/{total}] {message}", file=sys.stderr, flush=True)


def build(model: str, name: str | None, out: Path, latent_space: str | None, scaling_factor: float | None,
          tolerance: float, precisions: tuple[str, ...] = (), calibration: Path | None = None,
          gradient: bool = True, latent_codec: Path | None | bool = True) -> Path:
    """`latent_codec`: the trained latent codec's weights to export with the model; True for the one
    shipped for this latent space if there is one, False for none."""
    started = time.perf_counter()
    quiet_libraries()
    steps = 8 + len(precisions)
    progress(1, steps, f"loading {model}")
    loaded = load_model(model, scaling_factor)
    factor, channels = loaded.downsampling_factor, loaded.latent_channels
    photos = load_photos(calibration, factor) if calibration is not None else None  # refused before any work
    folder = out / (name or loaded.name)
    out.mkdir(parents=True, exist_ok=True)
    # Written beside the destination and renamed into place, so a failed build leaves nothing half-made.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=out))
    try:
        encoder, decoder = loaded.encoder_graph(), loaded.decoder_graph()
        export_image = sample_image(8 * factor, 8 * factor)
        progress(2, steps, "exporting encoder.onnx")
        export_graph(encoder, export_image, staging / "encoder.onnx", ENCODER_IO)
        progress(3, steps, "exporting decoder.onnx")
        with torch.no_grad():
            export_latent = encoder(export_image)
            export_graph(decoder, export_latent, staging / "decoder.onnx", DECODER_IO)
        if gradient:
            progress(4, steps, "exporting decoder_vjp.onnx (the decoder's gradient, for the encoder's effort)")
            export_vjp_graph(decoder, export_latent, export_image, staging / "decoder_vjp.onnx")

        # Another size than the export's, so the check also proves that the sides are dynamic.
        progress(5, steps, f"verifying onnxruntime against torch (tolerance {tolerance:g})")
        check_image = sample_image(9 * factor, 11 * factor)
        with torch.no_grad():
            check_latent = encoder(check_image)
        verification = {
            "tolerance": tolerance,
            "encoder": check_graph(encoder, staging / "encoder.onnx", ENCODER_IO, check_image, tolerance),
            "decoder": check_graph(decoder, staging / "decoder.onnx", DECODER_IO, check_latent, tolerance),
        }
        if gradient:
            verification["decoder_vjp"] = check_gradient_graph(decoder, staging / "decoder_vjp.onnx", check_latent,
                                                               check_image, tolerance)

        progress(6, steps, f"measuring channel sensitivities on {calibration or 'dead-leaves pictures'}")
        sensitivity = channel_sensitivity(encoder, decoder, calibration_pictures(photos, factor), channels)

        space = latent_space or loaded.latent_space
        weights = shipped_for(space) if latent_codec is True else latent_codec or None
        codec_entry = None
        if weights is not None:
            progress(6, steps, f"exporting the latent codec {weights.name}")
            with torch.no_grad():
                latents = [encoder(picture) for picture in calibration_pictures(photos, factor)]
            codec_entry = export_latent_codec(weights, staging, latents, decoder if gradient else None)
            verification["latent_codec_psnr_db"] = round(check_round_trip(
                staging, codec_entry, latents[0][0].numpy(), runner_for(staging, codec_entry)), 2)

        progress(7, steps, "measuring speed and memory")
        io_names = {"encoder": ENCODER_IO, "decoder": DECODER_IO}
        runners = {role: Runner(staging / f"{role}.onnx", "cpu", *io_names[role]) for role in io_names}
        pictures, check = pictures_for(photos)
        graphs = {role: Graph(f"{role}.onnx", file_sha256(staging / f"{role}.onnx"), *io_names[role])
                  for role in io_names}
        timed_latent, graphs["encoder"].seconds = timed(runners["encoder"], check)
        _, graphs["decoder"].seconds = timed(runners["decoder"], timed_latent)
        variants = []
        for step, precision in enumerate(precisions, start=8):
            progress(step, steps, f"making the {precision} variant")
            variants.append(build_variant(precision, staging, runners["encoder"], runners["decoder"], io_names,
                                          pictures, check))
        # Graphs with group norms are cut into segments for tiles that see the whole picture; run in
        # one piece, a float32 graph's segments must give what it gives, a variant's must stay as close
        # to float32 as the variant is (see check_segments).
        check_inputs = {ENCODER_IO[0]: (check_image.numpy(), factor), DECODER_IO[0]: (check_latent.numpy(), 1)}
        float32_outputs = {graph.input: runners[role](check_inputs[graph.input][0]) for role, graph in graphs.items()}
        references = [*((graph, None) for graph in graphs.values()),
                      *((graph, float32_outputs[graph.input]) for v in variants for graph in (v.encoder, v.decoder))]
        for graph, float32 in references:
            array, input_factor = check_inputs[graph.input]
            segments = split(staging / graph.file, staging, graph.file.removesuffix(".onnx"))
            if segments:
                verification.setdefault("segments", {})[graph.file], held = check_segments(
                    segments, staging, staging / graph.file, (graph.input, graph.output), array, input_factor,
                    tolerance, float32)
                graph.segments = Segmented(segments, round(held, 1))
            graph.memory = memory_model(staging / graph.file, graph.input, array.shape[1], input_factor)

        progress(steps, steps, f"writing {folder}")
        manifest = Manifest(
            name=folder.name,
            source=loaded.source,
            latent_space=space,
            latent_channels=channels,
            downsampling_factor=factor,
            scaling_factor=loaded.scaling_factor,
            shift_factor=loaded.shift_factor,
            encoder=graphs["encoder"],
            decoder=graphs["decoder"],
            decoder_vjp=Graph("decoder_vjp.onnx", file_sha256(staging / "decoder_vjp.onnx"), list(VJP_INPUTS),
                              list(VJP_OUTPUTS)) if gradient else None,
            verification=verification,
            channel_sensitivity=sensitivity,
            versions={package: version(package) for package in
                      ("sdlite", "torch", "diffusers", "onnx", "onnxscript", "onnxruntime")},
            variants=variants,
            latent_codec=codec_entry,
        )
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        os.chmod(staging, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {folder} in {time.perf_counter() - started:.1f} s: latent space {manifest.latent_space}, "
          f"{channels} channels at 1/{factor}, encoder max diff {verification['encoder']['max_abs_diff']:.2g}, "
          f"decoder max diff {verification['decoder']['max_abs_diff']:.2g}"
          + (f", gradient max diff {verification['decoder_vjp']['max_abs_diff']:.2g}" if gradient else ""),
          file=sys.stderr)
    for variant in variants:
        print(f"  {variant.precision}: decoded picture at {variant.psnr_db['encoder']:.1f} dB (encoder) and "
              f"{variant.psnr_db['decoder']:.1f} dB (decoder) against float32; {len(variant.float32_nodes)} nodes "
              f"kept in float32", file=sys.stderr)
    return folder
