"""The export's graphs against torch, and the full Stable Diffusion 1.x architecture end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sdlite
from sdlite import images

from conftest import SD1_CONFIG, TINY_CONFIG, make_vae
from pictures import photo


def test_manifest_records_what_a_decoder_needs(tiny_model):
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    assert manifest["latent_channels"] == 4 and manifest["downsampling_factor"] == 8
    assert manifest["scaling_factor"] == pytest.approx(TINY_CONFIG["scaling_factor"]) and manifest["shift_factor"] == 0.0
    assert manifest["latent_space"].startswith("weights-")
    for graph in ("encoder", "decoder"):
        assert len(manifest[graph]["sha256"]) == 64
        assert manifest["verification"][graph]["max_abs_diff"] <= manifest["verification"][graph]["bound"]
    assert {"torch", "diffusers", "onnx", "onnxruntime", "sdlite"} <= set(manifest["versions"])


def test_onnx_matches_torch_on_an_odd_sized_image(tiny_model):
    from export.sources import from_autoencoder_kl

    loaded = from_autoencoder_kl(make_vae(TINY_CONFIG, seed=0), "test", "tiny")  # the exported tiny model's weights
    codec = sdlite.Codec.load(tiny_model, precision="fp32")
    pixels = images.to_array(photo(97, 61), 8)
    with torch.no_grad():
        latent = loaded.encoder_graph()(torch.from_numpy(pixels)).numpy()
        decoded = loaded.decoder_graph()(torch.from_numpy(latent)).numpy()
    assert np.abs(codec.networks.encoder(pixels) - latent).max() < 1e-4
    assert np.abs(codec.networks.decoder(latent) - decoded).max() < 1e-4


def test_the_encoder_is_deterministic(tiny_model):
    codec = sdlite.Codec.load(tiny_model, precision="fp32")
    pixels = images.to_array(photo(32, 32), 8)
    assert np.array_equal(codec.networks.encoder(pixels), codec.networks.encoder(pixels))


def test_a_build_that_misses_its_tolerance_fails_and_leaves_no_folder(tiny_vae_folder, tmp_path):
    from conftest import export_command

    status, stderr = export_command("build", "--model", str(tiny_vae_folder), "--out", str(tmp_path),
                                    "--tolerance", "0", "--precisions", "none", "--no-gradient")
    assert status == 1 and "differs from torch" in stderr
    assert list(tmp_path.iterdir()) == []


def test_full_size_sd1_architecture_round_trip(sd1_model):
    codec = sdlite.Codec.load(sd1_model)
    manifest = codec.manifest
    assert (manifest.latent_channels, manifest.downsampling_factor) == (SD1_CONFIG["latent_channels"], 8)
    data = codec.encode(photo(256, 192), quality=50)  # not square, so swapped sides would show; small, for speed
    assert sdlite.SdcFile.from_bytes(data).latent_shape == (4, 24, 32)
    assert codec.decode(data).size == (256, 192)


def test_calibration_photos_are_used_and_too_few_are_refused_before_any_work(tiny_vae_folder, tmp_path):
    from conftest import export_command, export_model

    photos = tmp_path / "photos"
    photos.mkdir()
    photo(40, 32, seed=0).save(photos / "a.png")
    status, stderr = export_command("build", "--model", str(tiny_vae_folder), "--out", str(tmp_path / "refused"),
                                    "--calibration", str(photos))
    assert status == 1 and "needs at least two" in stderr and "exporting" not in stderr
    photo(48, 40, seed=1).save(photos / "b.jpg")
    folder = export_model(tiny_vae_folder, tmp_path / "models", "--calibration", str(photos), "--precisions", "int8",
                          "--no-gradient")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["channel_sensitivity"]) == 4 and manifest["variants"][0]["precision"] == "int8"
