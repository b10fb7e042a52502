"""Tiny autoencoders (TAESD, TAEF2) from their original checkpoint layout: random ones made here, and
the real TAEF2 from ../shared when it is there."""

from __future__ import annotations

import json

import numpy as np

import sdlite
from sdlite import images

from conftest import export_command, export_model, save_random_tae
from pictures import photo, psnr


def assert_round_trips(model, latent_channels: int) -> None:
    manifest = json.loads((model / "manifest.json").read_text())
    assert (manifest["latent_channels"], manifest["downsampling_factor"]) == (latent_channels, 8)
    assert manifest["latent_space"].startswith("weights-")
    codec = sdlite.Codec.load(model)
    assert codec.decode(codec.encode(photo(45, 30))).size == (45, 30)


def test_a_pooled_tae_pair_is_detected_exported_and_verified(taef2_model_if_here, tmp_path):
    """FLUX.2's shape: 32 channels, a pooling branch. The real TAEF2, which the suite exports anyway, where it
    is here; else a random pair."""
    model = taef2_model_if_here
    if model is None:
        source = save_random_tae(tmp_path / "tae", 32, pooled=True)
        model = export_model(source, tmp_path / "models", "--precisions", "none", "--no-gradient")
    assert_round_trips(model, 32)


def test_one_half_of_a_pair_exports_the_whole_pair(tae_model):
    assert tae_model.name == "tiny"
    assert {variant["precision"] for variant in json.loads((tae_model / "manifest.json").read_text())["variants"]} \
        == {"int8", "fp16"}
    assert_round_trips(tae_model, 4)


def test_a_lone_half_is_refused_in_one_line(tmp_path):
    source = save_random_tae(tmp_path / "tae", 4, False)
    (source / "tiny_decoder.pth").unlink()
    status, stderr = export_command("build", "--model", str(source / "tiny_encoder.pth"),
                                    "--out", str(tmp_path / "models"))
    assert status == 1 and "_decoder" in stderr


def test_pretrained_taef2_round_trip_is_faithful(taef2_model):
    codec = sdlite.Codec.load(taef2_model)
    assert (codec.manifest.latent_channels, codec.manifest.downsampling_factor) == (32, 8)
    image = photo(128, 96)
    exact = images.from_array(codec.networks.decoder(codec.networks.encoder(images.to_array(image, 8))), 128, 96)
    assert psnr(exact, image) > 25  # a trained model reproduces the picture; random weights would not
    assert np.isfinite(psnr(codec.decode(codec.encode(image, quality=90)), image))
