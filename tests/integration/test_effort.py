"""Encoder effort: the decoder's gradient graph against torch autograd, and the latent search."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch

import sdlite
from sdlite import effort, images, methods
from sdlite.container import SdcFile
from sdlite.networks.inference import Graph

from conftest import TAEF2, run
from pictures import photo, psnr
from test_torch_free import BLOCK_TORCH


def assert_matches_torch_autograd(graph_path, decoder: torch.nn.Module, channels: int) -> None:
    """The gradient graph at another size than the export's (the sides are dynamic) against torch autograd."""
    from export.vjp import VJP_INPUTS, VJP_OUTPUTS

    torch.manual_seed(1)
    latent, target = torch.randn(1, channels, 5, 7), torch.rand(1, 3, 40, 56)
    latent_leaf = latent.clone().requires_grad_()
    expected_image = decoder(latent_leaf)
    torch.mean((expected_image - target) ** 2).backward()
    image, gradient = Graph(graph_path, "cpu", VJP_INPUTS, VJP_OUTPUTS)(latent.numpy(), target.numpy())
    assert np.abs(image - expected_image.detach().numpy()).max() < 1e-5
    expected = latent_leaf.grad.numpy()
    assert np.abs(expected).max() > 0
    assert np.abs(gradient - expected).max() < 1e-4 * np.abs(expected).max()
    # onnxruntime's CPU scatters add on several threads without atomics (a many-core machine loses
    # additions), so the upsampling's gradient must be a block sum
    operators = {node.op_type for node in onnx.load(graph_path).graph.node}
    assert not operators & {"ScatterND", "ScatterElements"}


def test_a_tiny_autoencoder_s_gradient_graph_matches_torch_autograd(taef2_model_if_here, tmp_path):
    """The real TAEF2's gradient graph, which the suite exports anyway, where it is here; else a random pooled
    decoder's, exported here."""
    from export import tae
    from export.graphs import DecoderGraph
    from export.sources import load_model
    from export.vjp import export_vjp_graph

    if taef2_model_if_here is not None:
        decoder, channels = load_model(str(TAEF2)).decoder_graph(), 32
        graph = taef2_model_if_here / "decoder_vjp.onnx"
    else:
        torch.manual_seed(0)
        decoder, channels, graph = DecoderGraph(tae.Decoder(8, pooled=True).eval(), 1.0, 0.0), 8, tmp_path / "vjp.onnx"
        export_vjp_graph(decoder, torch.randn(1, 8, 4, 4), torch.rand(1, 3, 32, 32), graph)
    assert_matches_torch_autograd(graph, decoder, channels)


def test_the_exported_vae_s_gradient_graph_matches_torch_autograd(tiny_model, tiny_vae_folder):
    from export.sources import load_model

    decoder = load_model(str(tiny_vae_folder)).decoder_graph()
    assert_matches_torch_autograd(tiny_model / "decoder_vjp.onnx", decoder, 4)


def test_the_manifest_records_the_verified_gradient_graph(tiny_model):
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    graph = manifest["decoder_vjp"]
    assert graph["input"] == ["latent", "target"] and graph["output"] == ["image", "latent_gradient"]
    assert len(graph["sha256"]) == 64
    check = manifest["verification"]["decoder_vjp"]
    assert 0 < check["bound"] and check["max_abs_diff"] <= check["bound"]


def distortion_and_levels(codec, data: bytes, pixels: np.ndarray) -> tuple[float, np.ndarray]:
    """The decoded latent's MSE to the padded picture (unrounded, as the search measures it), and its levels."""
    sdc = SdcFile.from_bytes(data)
    model = methods.METHODS[sdc.method].coder.from_bytes(sdc.model_params, sdc.latent_shape)
    levels = model.decompress(sdc.payload, sdc.latent_shape)
    decoded = codec.networks.decoder(model.dequantize(levels, sdc.step)[None])
    return float(np.mean((decoded - pixels) ** 2, dtype=np.float64)), levels


@pytest.mark.parametrize("method", ["predictive", "uniform"])
@pytest.mark.parametrize("quality", [10, 60])
def test_effort_lowers_distortion_plus_rate(tiny_model, method, quality):
    codec = sdlite.Codec.load(tiny_model)
    image = photo(61, 45)
    pixels, area = images.to_array(image, 8), 61 * 45
    baseline = codec.encode(image, quality=quality, method=method)
    start_distortion, start_levels = distortion_and_levels(codec, baseline, pixels)
    # the search's rate weight, from where it starts: effort 0's levels
    rate_weight = effort.RATE_SLOPE * start_distortion * area / effort.histogram_rate(start_levels)[0]

    def objective(data: bytes) -> float:
        return distortion_and_levels(codec, data, pixels)[0] + rate_weight * 8 * len(data) / area

    for level in (1, 2):
        assert objective(codec.encode(image, quality=quality, method=method, effort=level)) <= objective(baseline)


def test_effort_with_rate_control_stays_within_the_budget(tiny_model):
    codec = sdlite.Codec.load(tiny_model)
    budget = len(codec.encode(photo(64, 48), quality=50))
    assert len(codec.encode(photo(64, 48), size=budget, effort=1)) <= budget
    with pytest.raises(sdlite.SdliteError, match="not available with the palette method"):
        codec.encode(photo(64, 48), method="palette", effort=1)


def test_effort_reports_its_steps_and_files_decode_with_the_plain_decoder(tiny_model):
    codec = sdlite.Codec.load(tiny_model)
    calls = []
    data = codec.encode(photo(40, 24), quality=70, effort=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, effort.EFFORT_STEPS[1]) for i in range(1, effort.EFFORT_STEPS[1] + 1)]
    assert codec.decode(data).size == (40, 24)
    with pytest.raises(sdlite.SdliteError, match="effort must be between 0 and"):
        codec.encode(photo(8, 8), effort=effort.MAX_EFFORT + 1)


def test_a_model_without_the_gradient_graph_still_encodes_and_decodes(tiny_model, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(tiny_model, older)
    (older / "decoder_vjp.onnx").unlink()
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["decoder_vjp"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    codec = sdlite.Codec.load(older)
    data = codec.encode(photo(24, 16), effort=0)
    assert codec.decode(data).size == (24, 16)
    with pytest.raises(sdlite.SdliteError, match="no decoder gradient graph"):
        codec.encode(photo(24, 16), effort=1)
    assert sdlite.Codec.load(tiny_model).decode(codec.encode(photo(24, 16))).size == (24, 16)


def test_cli_effort_without_torch(tiny_model, tmp_path):
    photo(30, 20).save(tmp_path / "p.png")
    cli = BLOCK_TORCH + "from sdlite.cli import main\nmain()\n"
    result = run(sys.executable, "-c", cli, "encode", str(tmp_path / "p.png"), "--effort", "1", "--model", str(tiny_model))
    assert result.returncode == 0, result.stderr.decode()
    assert sdlite.Codec.load(tiny_model).decode((tmp_path / "p.sdc").read_bytes()).size == (30, 20)
    result = run(sys.executable, "-m", "sdlite.cli", "encode", str(tmp_path / "p.png"), "--effort", "99",
                 "--model", str(tiny_model))
    assert result.returncode != 0 and b"Traceback" not in result.stderr


def test_effort_improves_the_real_taef2(taef2_model):
    codec = sdlite.Codec.load(taef2_model)
    image = photo(128, 96)
    plain, searched = codec.encode(image, quality=50), codec.encode(image, quality=50, effort=2)
    assert len(searched) <= 1.05 * len(plain)
    assert psnr(codec.decode(searched), image) > psnr(codec.decode(plain), image) + 0.5


# The search still works tile by tile with each tile's own statistics, so it is measured against tiles
# run alone (no budget to hold the picture's statistics): against the tiles run in step, which the
# tiny VAE's encoder and TAEF2's float32 one are with the default budget, it does not improve.
@pytest.mark.parametrize("model", ["tiny_model", "taef2_model"])
def test_a_large_picture_is_searched_tile_by_tile(model, request):
    model = request.getfixturevalue(model)
    codec = sdlite.Codec.load(model, tile=4, max_memory=1, precision="fp32")  # latent 8 x 6: tiles of 4, 3 x 2
    image = photo(64, 48)
    pixels = images.to_array(image, 8)
    calls = []
    searched = codec.encode(image, quality=90, effort=1, progress=lambda done, total: calls.append((done, total)))
    steps = effort.EFFORT_STEPS[1]
    assert calls == [(i, 6 * steps) for i in range(1, 6 * steps + 1)]
    plain = codec.encode(image, quality=90)
    assert searched != plain
    whole = sdlite.Codec.load(model, precision="fp32")
    assert distortion_and_levels(whole, searched, pixels)[0] < distortion_and_levels(whole, plain, pixels)[0]


def test_an_export_without_the_gradient_graph_refuses_only_effort(other_model):
    assert json.loads((other_model / "manifest.json").read_text())["decoder_vjp"] is None
    assert not (other_model / "decoder_vjp.onnx").exists()
    codec = sdlite.Codec.load(other_model)
    assert codec.decode(codec.encode(photo(24, 16))).size == (24, 16)
    with pytest.raises(sdlite.SdliteError, match="no decoder gradient graph"):
        codec.encode(photo(24, 16), effort=1)
