"""Tiling, precision variants, the session cache and batches, on small random VAEs and small pictures."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sdlite
from sdlite import images
from sdlite.networks import inference
from sdlite.networks.runner import PICTURE_BYTES_PER_PIXEL
from sdlite.networks.inference import CUDA, Graph, cached_graph_path, new_session
from sdlite.networks.precision import ACCEPTABLE_PSNR_DB
from sdlite.networks.tiling import MemoryModel, Tiling

from conftest import TINY_CONFIG, export_model, make_vae, run
from pictures import photo, psnr

SDLITE = [sys.executable, "-m", "sdlite.cli"]


def test_the_picture_s_own_buffers_count_against_the_budget(tiny_model):
    manifest = sdlite.Manifest.from_json((tiny_model / "manifest.json").read_text())
    memory = MemoryModel(*manifest.decoder.memory)
    cells, pixels = 32 * 32, 256 * 256
    network_only = int(memory.peak(cells)) + 1
    assert sdlite.Codec.load(tiny_model, precision="fp32", max_memory=network_only).networks.tiling("decoder", 32, 32)
    beside = network_only + PICTURE_BYTES_PER_PIXEL * pixels
    assert sdlite.Codec.load(tiny_model, precision="fp32", max_memory=beside).networks.tiling("decoder", 32, 32) is None


def test_the_manifest_records_memory_and_time_for_every_graph(tiny_model):
    manifest = sdlite.Manifest.from_json((tiny_model / "manifest.json").read_text())
    graphs = [manifest.encoder, manifest.decoder] + [g for v in manifest.variants for g in (v.encoder, v.decoder)]
    for graph in graphs:
        fixed, linear, quadratic = graph.memory
        assert fixed > 10e6 and linear > 0 and quadratic > 0  # the tiny VAE has mid-block attention
        assert graph.seconds > 0


def test_a_tiled_codec_agrees_with_the_whole_picture(tae_model):
    whole = sdlite.Codec.load(tae_model, precision="fp32")
    tiled = sdlite.Codec.load(tae_model, precision="fp32", tile=32)
    pixels = images.to_array(photo(400, 300), 8)  # a latent of 50 x 38 cells: 2 x 2 tiles
    assert whole.networks.tiling("decoder", 38, 50) is None and tiled.networks.tiling("decoder", 38, 50) == Tiling(32, 8)
    latent = whole.networks.run_encoder(pixels)
    reference = whole.networks.run_decoder(latent)
    assert psnr_of(tiled.networks.run_decoder(latent), reference) > 40
    assert psnr_of(whole.networks.run_decoder(tiled.networks.run_encoder(pixels)), reference) > 40
    data = tiled.encode(photo(400, 300))
    assert tiled.decode(data).size == (400, 300)


def psnr_of(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_a_small_memory_budget_tiles_automatically(tiny_model):
    manifest = sdlite.Manifest.from_json((tiny_model / "manifest.json").read_text())
    budget = int(MemoryModel(*manifest.decoder.memory).peak(24 * 24))
    codec = sdlite.Codec.load(tiny_model, precision="fp32", max_memory=budget)
    tiling = codec.networks.tiling("decoder", 64, 64)
    assert tiling is not None and 16 <= tiling.tile <= 24
    assert codec.decode(codec.encode(photo(512, 512))).size == (512, 512)


def test_variants_are_recorded_with_their_quality(tiny_model):
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    variants = {v["precision"]: v for v in manifest["variants"]}
    assert set(variants) == {"int8", "fp16"}
    assert variants["int8"]["devices"] == ["cpu"] and variants["fp16"]["devices"] == ["cuda"]
    for variant in variants.values():
        assert set(variant["psnr_db"]) == {"encoder", "decoder"}
        assert all(np.isfinite(v) for v in variant["psnr_db"].values())
    assert variants["fp16"]["psnr_db"]["decoder"] > 50  # half precision is nearly exact here


def decoder_quality(model: Path):
    """The model's manifest, float32 decoder, two calibration latents and the int8 search's measure of a
    decoder graph's quality against float32."""
    from export import precision

    manifest = sdlite.Manifest.from_json((model / "manifest.json").read_text())
    encoder = Graph(model / "encoder.onnx", "cpu", manifest.encoder.input, manifest.encoder.output)
    decoder = Graph(model / "decoder.onnx", "cpu", manifest.decoder.input, manifest.decoder.output)
    pictures, _ = precision.pictures_for(None, count=2)
    latents = [encoder(picture) for picture in pictures]
    return manifest, decoder, latents, precision.quality_against_float32("decoder", manifest.decoder.input, decoder,
                                                                         pictures, latents)


def test_int8_keeps_the_convolutions_costing_most_quality_per_multiply_add_in_float32_until_the_target(
        tiny_model, tmp_path, monkeypatch):
    import onnx

    from export import precision

    manifest, decoder, latents, quality = decoder_quality(tiny_model)
    monkeypatch.setattr(precision, "INT8_TARGET_DB", 0.0)  # met by the whole graph in int8
    assert precision.int8_graph(decoder.path, tmp_path / "all.onnx", manifest.decoder.input, latents, quality) == []
    whole = quality(onnx.load(str(tmp_path / "all.onnx")))
    original = onnx.load(str(decoder.path))
    costs = precision.convolution_costs(original, manifest.decoder.input, latents[0])
    monkeypatch.setattr(precision, "INT8_TARGET_DB", whole + 2.0)
    monkeypatch.setattr(precision, "INT8_FLOAT32_SHARE", 0.0)  # none may be kept: the target is out of reach
    assert precision.int8_graph(decoder.path, tmp_path / "none.onnx", manifest.decoder.input, latents, quality) == []
    monkeypatch.setattr(precision, "INT8_FLOAT32_SHARE", 1.0)
    kept = precision.int8_graph(decoder.path, tmp_path / "some.onnx", manifest.decoder.input, latents, quality)
    model = onnx.load(str(tmp_path / "some.onnx"))
    assert kept and len(kept) < len(costs)
    assert quality(model) >= whole + 2.0 - 0.05
    # each kept unit (the convolutions reading one tensor), taken alone out of int8, wins more quality
    # per multiply-add than any other
    quantised = onnx.load(str(tmp_path / "all.onnx"))
    error = precision.squared_error(whole)
    units = precision.sharing_input(original)
    assert any(len(unit) == 4 for unit in units)  # an upsampling's phase convolutions
    gain = {unit: (error - precision.squared_error(quality(precision.in_float32(quantised, original, set(unit)))))
            / sum(costs[name] for name in unit) for unit in units}
    kept_units = [unit for unit in units if set(unit) <= set(kept)]
    assert {name for unit in kept_units for name in unit} == set(kept)
    assert min(gain[unit] for unit in kept_units) >= max(gain[unit] for unit in units if unit not in kept_units)
    producer = {output: node.op_type for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.op_type == "Conv":
            reads_int8 = producer.get(node.input[0]) == "DequantizeLinear"
            assert reads_int8 == (node.name not in kept)
    # Out of reach within the share: the whole share is spent, in the same order.
    last = len(next(unit for unit in units if kept[-1] in unit))
    share = sum(costs[name] for name in kept[:-last]) / sum(costs.values()) * (1 + 1e-9)
    monkeypatch.setattr(precision, "INT8_FLOAT32_SHARE", share)
    monkeypatch.setattr(precision, "INT8_TARGET_DB", 99.0)
    assert precision.int8_graph(decoder.path, tmp_path / "share.onnx", manifest.decoder.input, latents,
                                quality) == kept[:-last]


def test_in_float32_matches_quantising_without_the_nodes(tiny_model, tmp_path):
    import onnx

    from export import precision

    manifest, decoder, latents, quality = decoder_quality(tiny_model)
    name = manifest.decoder.input
    precision.quantize_convolutions(decoder.path, tmp_path / "all.onnx", name, latents, excluded=[])
    original = onnx.load(str(decoder.path))
    convolutions = [node.name for node in original.graph.node if node.op_type == "Conv"]
    half = convolutions[::2]
    precision.quantize_convolutions(decoder.path, tmp_path / "half.onnx", name, latents, excluded=half)
    estimated = quality(precision.in_float32(onnx.load(str(tmp_path / "all.onnx")), original, set(half)))
    assert estimated == pytest.approx(quality(onnx.load(str(tmp_path / "half.onnx"))), abs=0.05)


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
def test_each_precision_round_trips_and_stays_near_float32(tiny_model, precision):
    reference = sdlite.Codec.load(tiny_model, precision="fp32")
    codec = sdlite.Codec.load(tiny_model, precision=precision)
    assert codec.networks.precision_of("decoder") == precision
    data = reference.encode(photo(64, 48))
    recorded = codec.manifest.graphs(precision)
    assert recorded is not None and Path(codec.networks.decoder.label).name == recorded[1].file
    assert psnr(codec.decode(data), reference.decode(data)) > 20


def test_auto_takes_the_fastest_acceptable_variant(tiny_model):
    codec = sdlite.Codec.load(tiny_model, precision="auto")
    manifest = codec.manifest
    for role in ("encoder", "decoder"):
        options = [("fp32", getattr(manifest, role))] + [
            (v.precision, getattr(v, role)) for v in manifest.variants
            if "cpu" in v.devices and v.psnr_db[role] >= ACCEPTABLE_PSNR_DB]
        assert codec.networks.precision_of(role) == min(options, key=lambda option: option[1].seconds)[0]


def test_unknown_or_missing_precisions_are_refused(tiny_model, other_model):
    with pytest.raises(sdlite.SdliteError, match="unknown precision"):
        sdlite.Codec.load(tiny_model, precision="int4")
    with pytest.raises(sdlite.SdliteError, match="has no int8 variant"):
        sdlite.Codec.load(other_model, precision="int8").networks.decoder
    assert sdlite.Codec.load(other_model, precision="auto").networks.precision_of("decoder") == "fp32"


def test_fp16_keeps_overflowing_nodes_in_float32(tmp_path):
    vae = make_vae(TINY_CONFIG, seed=0)
    with torch.no_grad():  # one convolution whose output is far beyond fp16's 65504; a group norm follows it
        vae.decoder.mid_block.resnets[0].conv1.weight.mul_(1e5)
    vae.save_pretrained(tmp_path / "hot")
    folder = export_model(tmp_path / "hot", tmp_path / "models", "--precisions", "fp16", "--no-gradient")
    manifest = sdlite.Manifest.from_json((folder / "manifest.json").read_text())
    (variant,) = manifest.variants
    assert any("conv2d" in node for node in variant.float32_nodes)
    assert variant.psnr_db["decoder"] > 40
    codec = sdlite.Codec.load(folder, precision="fp16")
    latent = np.random.default_rng(0).normal(size=(1, 4, 12, 10)).astype(np.float32)
    assert np.isfinite(codec.networks.decoder(latent)).all()


def test_the_optimised_graph_is_cached_and_a_damaged_cache_is_remade(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    manifest = sdlite.Manifest.from_json((tiny_model / "manifest.json").read_text())
    entry = manifest.decoder
    latent = np.random.default_rng(0).normal(size=(1, 4, 6, 5)).astype(np.float32)
    first = Graph(tiny_model / entry.file, "cpu", entry.input, entry.output, cache=True)(latent)
    cached = cached_graph_path(entry.sha256, ["CPUExecutionProvider"])
    assert cached.is_file() and [p.name for p in cached.parent.iterdir()] == [cached.name]
    assert np.allclose(Graph(tiny_model / entry.file, "cpu", entry.input, entry.output, cache=True)(latent),
                       first, atol=1e-5)
    cached.write_bytes(b"damaged")
    again = Graph(tiny_model / entry.file, "cpu", entry.input, entry.output, cache=True)(latent)
    assert np.allclose(again, first, atol=1e-5) and cached.stat().st_size > 1000


def test_the_session_kept_is_loaded_from_the_cache_even_when_it_was_just_written(tiny_model, tmp_path, monkeypatch):
    # the session that optimises holds more memory than one loaded from its output (SD int8 decoder:
    # 2048x2048 decoded in 3.11 GiB against 2.15), so it only writes the cache
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    loaded = []
    monkeypatch.setattr(inference, "new_session", lambda model, *rest: loaded.append(model) or new_session(model, *rest))
    entry = sdlite.Manifest.from_json((tiny_model / "manifest.json").read_text()).decoder
    Graph(tiny_model / entry.file, "cpu", entry.input, entry.output, cache=True)
    assert loaded[1:] == [cached_graph_path(entry.sha256, ["CPUExecutionProvider"])]


def test_an_unwritable_cache_still_runs(tiny_model, tmp_path, monkeypatch):
    if os.geteuid() == 0:
        target = tmp_path / "a-file"
        target.write_text("not a folder")
        monkeypatch.setenv("SDLITE_CACHE_DIR", str(target / "cache"))  # cannot be made, even by root
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "locked" / "cache"))
    codec = sdlite.Codec.load(tiny_model, precision="fp32")
    assert codec.decode(codec.encode(photo(16, 16))).size == (16, 16)


def test_batch_with_workers_reports_the_bad_file_and_sums_up(tmp_path, tiny_model):
    env = {"SDLITE_MODELS_DIR": str(tiny_model.parent)}
    names = []
    for i in range(4):
        photo(40, 24, seed=i).save(tmp_path / f"p{i}.png")
        names.append(str(tmp_path / f"p{i}.png"))
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    result = run(*SDLITE, "encode", *names, str(tmp_path / "bad.png"), "-o", f"{out}/", "--jobs", "2", env=env)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "bad.png: not an image file" in stderr and "Traceback" not in stderr
    assert "encoded 4 of 5 files" in stderr and "images/s" in stderr
    assert sorted(p.name for p in out.iterdir()) == [f"p{i}.sdc" for i in range(4)]
    decoded = run(*SDLITE, "decode", *(str(p) for p in sorted(out.iterdir())), "-o", str(out), "--jobs", "2",
                  "--precision", "int8", env=env)
    assert decoded.returncode == 0, decoded.stderr.decode()
    assert len(list(out.glob("*.png"))) == 4


def test_cli_options_for_precision_and_memory(tmp_path, tiny_model):
    env = {"SDLITE_MODELS_DIR": str(tiny_model.parent)}
    photo(100, 60).save(tmp_path / "p.png")
    for args, message, status in ((["--precision", "int4"], "unknown precision", 2),
                                  (["--max-memory", "lots"], "--max-memory", 2), (["--max-memory", "1K"], "too little", 1)):
        result = run(*SDLITE, "encode", str(tmp_path / "p.png"), *args, env=env)
        assert result.returncode == status and message in result.stderr.decode(), result.stderr.decode()
    assert run(*SDLITE, "encode", str(tmp_path / "p.png"), "--tile", "4", env=env).returncode == 0
    assert run(*SDLITE, "decode", str(tmp_path / "p.sdc"), "-f", "--tile", "4", "--spill", env=env).returncode == 0
    listing = run(*SDLITE, "models", env=env).stdout.decode()
    assert "int8 for cpu (encoder" in listing and "fp16 for cuda" in listing
    assert "precisions     fp32, int8" in run(*SDLITE, "info", str(tmp_path / "p.sdc"), env=env).stdout.decode()


def test_cuda_that_cannot_start_is_an_error_not_a_silent_cpu_run(tiny_model, monkeypatch, capsys):
    """An onnxruntime that lists CUDA but cannot start it (no cuDNN, say) falls back to the CPU and
    prints so on stdout; here a CPU-only onnxruntime is made to list CUDA, and falls back the same way."""
    import onnxruntime

    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: it would start")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    pixels = images.to_array(photo(64, 48), 8)
    with pytest.raises(sdlite.SdliteError, match="could not start CUDA"):
        sdlite.Codec.load(tiny_model, device="cuda", precision="fp32").networks.run_encoder(pixels)
    assert sdlite.Codec.load(tiny_model, device="auto", precision="fp32").networks.run_encoder(pixels).shape[1] == 4
    assert capsys.readouterr().out == ""


def test_cuda_runs_through_io_binding(tiny_model):
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        pytest.skip("no CUDA in this onnxruntime")
    codec = sdlite.Codec.load(tiny_model, device="cuda", precision="fp16")
    assert codec.networks.decoder.on_cuda
    reference = sdlite.Codec.load(tiny_model, precision="fp32")
    pixels = images.to_array(photo(64, 48), 8)
    assert np.abs(codec.networks.decoder(reference.encoder(pixels)) - reference.decoder(reference.encoder(pixels))).max() < 0.05
