"""A trained latent codec (train_codec.py) into a model folder: its three graphs, and its integer
hyper-synthesis and frequency tables in latent_codec.safetensors, which is what decides probabilities.

The shipped codecs live in export/latent_codecs/, one safetensors file per latent space, found by the
latent space name in their metadata.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from safetensors.torch import load_file

from sdlite.networks.inference import Graph as Runner
from sdlite.manifest import MANIFEST_NAME, Graph, LatentCodecEntry, file_sha256, load_manifest
from sdlite.methods.learned import LOG_SCALE_UNITS, LatentCodecParameters, LearnedCode
from sdlite.methods.tables import SCALES, FrequencyTable, HYPER_RANGE, tail

from .entropy_models import gaussian_frequency_tables
from .graphs import export_graph
from .integer_network import activation_ranges, integer_network
from .latent_codec import LatentCodec
from .vjp import VJP_INPUTS, VJP_OUTPUTS, export_vjp_graph

SHIPPED = Path(__file__).parent / "latent_codecs"
PARAMETERS_FILE = "latent_codec.safetensors"
GRAPHS = {"analysis": ("latent", "code"), "hyper_analysis": ("code", "hyper"), "synthesis": ("code", "latent")}


def shipped_for(latent_space: str) -> Path | None:
    """The committed latent codec trained for this latent space, if there is one."""
    for path in sorted(SHIPPED.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("latent_space") == latent_space:
                return path
    return None


def load_trained(path: Path) -> LatentCodec:
    with safe_open(path, "pt") as f:
        shape = json.loads(f.metadata()["shape"])
    model = LatentCodec(**shape)
    model.load_state_dict(load_file(path))
    return model.eval()


def scale_thresholds() -> np.ndarray:
    """The integer log scale from which each scale index on is chosen: halfway between neighbours."""
    logs = np.log(SCALES)
    return np.ceil(LOG_SCALE_UNITS * (logs[:-1] + logs[1:]) / 2).astype(np.int64)


@torch.no_grad()
def export_latent_codec(weights: Path, folder: Path, latents: list[torch.Tensor],
                        decoder: torch.nn.Module | None = None) -> LatentCodecEntry:
    """Writes the graphs and parameters into `folder`; `latents` calibrate the integer network's ranges.
    With the VAE's `decoder` graph, also the gradient graph through synthesis and decoder that the
    encoder's effort searches the code with (code_vjp.onnx: (code, target) -> (image, code gradient))."""
    model = load_trained(weights)
    example = latents[0][..., :16, :16]
    code = model.analysis(example)
    modules = {"analysis": (model.analysis, example), "hyper_analysis": (model.hyper_analysis, code),
               "synthesis": (model.synthesis, code)}
    for name, (module, sample) in modules.items():
        export_graph(module, sample, folder / f"{name}.onnx", GRAPHS[name])
    hyper_inputs = []
    for latent in latents:
        padded = pad_to_grid(latent)
        for level in torch.linspace(0, model.shape["levels"] - 1, 5):
            gain, _ = model.gains(level[None])
            hyper_inputs.append(torch.round(model.hyper_analysis(model.analysis(padded) * gain)))
    ranges = activation_ranges(model.hyper_synthesis, hyper_inputs)
    parameters = LatentCodecParameters(
        hyper_synthesis=integer_network(model.hyper_synthesis, ranges, model.shape["code_channels"]),
        hyper_tables=[FrequencyTable(row, -HYPER_RANGE) for row in model.hyper_prior.frequency_tables()],
        scale_tables=[FrequencyTable(row, -tail(k)) for k, row in enumerate(gaussian_frequency_tables())],
        scale_thresholds=scale_thresholds(),
        log_gain=model.log_gain.numpy(), log_inverse_gain=model.log_inverse_gain.numpy())
    save_file(parameters.to_arrays(), folder / PARAMETERS_FILE)
    graphs = {name: Graph(f"{name}.onnx", file_sha256(folder / f"{name}.onnx"), *GRAPHS[name]) for name in GRAPHS}
    gradient = None
    if decoder is not None:
        through_decoder = torch.nn.Sequential(model.synthesis, decoder)
        target = through_decoder(code)
        export_vjp_graph(through_decoder, code, target, folder / "code_vjp.onnx")
        gradient = Graph("code_vjp.onnx", file_sha256(folder / "code_vjp.onnx"), list(VJP_INPUTS), list(VJP_OUTPUTS))
    return LatentCodecEntry(file=PARAMETERS_FILE, sha256=file_sha256(folder / PARAMETERS_FILE),
                            source=weights.name, code_vjp=gradient, **graphs)


def pad_to_grid(latent: torch.Tensor, grid: int = 8) -> torch.Tensor:
    height, width = latent.shape[2:]
    return torch.nn.functional.pad(latent, (0, -width % grid, 0, -height % grid), mode="replicate")


def check_round_trip(folder: Path, entry: LatentCodecEntry, latent: np.ndarray, run_graph) -> float:
    """Codes a latent at the middle quality with the runtime's method; the coded latent's PSNR against it
    (peak: the latent's range), which the build reports."""
    parameters = LatentCodecParameters.from_bytes((folder / entry.file).read_bytes())
    code = LearnedCode(parameters, run_graph)
    block, payload = code.encode(latent, 50.0)
    decoded = code.decode(block, payload, latent.shape)
    error = float(np.mean((decoded - latent) ** 2))
    peak = float(latent.max() - latent.min())
    return 10 * math.log10(peak**2 / max(error, 1e-20))


def install_latent_codec(weights: Path, folder: Path, latents: list[np.ndarray]) -> float:
    """Exports a trained latent codec into an existing model folder and adds it to the manifest; the
    coded latent's PSNR at the middle quality (see check_round_trip)."""
    manifest = load_manifest(folder)
    tensors = [torch.from_numpy(latent[None]) for latent in latents]
    entry = export_latent_codec(weights, folder, tensors)
    psnr = check_round_trip(folder, entry, latents[0], runner_for(folder, entry))
    manifest.latent_codec = entry
    manifest.verification["latent_codec_psnr_db"] = round(psnr, 2)
    staged = folder / f".{MANIFEST_NAME}.tmp"
    staged.write_text(manifest.to_json(), encoding="utf-8")
    staged.replace(folder / MANIFEST_NAME)
    return psnr


def runner_for(folder: Path, entry: LatentCodecEntry):
    """run_graph(name, array) over the latent codec's graphs in `folder`, as the runtime calls them."""
    runners = {name: Runner(folder / graph.file, "cpu", graph.input, graph.output)
               for name, graph in entry.graphs.items()}
    return lambda name, array: runners[name](array)
