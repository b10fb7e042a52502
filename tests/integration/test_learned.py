"""Method 3, learned: the latent codec that `python -m export train-codec` trains and installs, its exact
integer probabilities, and its agreement with docs/METHODS.md through the second decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sdlite
from sdlite.container import SdcFile
from sdlite.methods import METHODS
from sdlite.methods.learned import Learned

import second_decoder
from conftest import export_command
from pictures import photo


@pytest.fixture(scope="module")
def codec(learned_model):
    return sdlite.Codec.load(learned_model)


def test_training_writes_weights_and_a_resumable_checkpoint(learned_model):
    training = learned_model.parents[1] / "training"
    assert (training / "latent_codec.safetensors").is_file()
    assert json.loads((training / "settings.json").read_text())["training_photos"] == 9  # one in ten held out
    import torch

    assert torch.load(training / "checkpoint.pt", weights_only=False)["step"] == 4
    status, stderr = export_command("train-codec", "--model", str(learned_model), "--images",
                                    str(learned_model.parents[1] / "photos"), "--out", str(training), "--steps", "5",
                                    "--batch", "2", "--crop", "8", "--no-install")
    assert status == 0, stderr
    assert torch.load(training / "checkpoint.pt", weights_only=False)["step"] == 5  # one more step, not five


def test_the_learned_method_codes_when_asked_and_predictive_stays_the_default(codec):
    data = codec.encode(photo(40, 24), method="learned")
    assert SdcFile.from_bytes(data).method == Learned.id
    assert codec.decode(data).size == (40, 24)
    assert SdcFile.from_bytes(codec.encode(photo(16, 16))).method == METHODS[2].id


def test_a_model_without_a_codec_refuses_the_learned_method(tiny_model):
    with pytest.raises(sdlite.SdliteError, match="no trained latent codec"):
        sdlite.Codec.load(tiny_model).encode(photo(16, 16), method="learned")


@pytest.mark.parametrize("size", [(40, 24), (72, 56), (9, 130)])
@pytest.mark.parametrize("quality", [0, 37.5, 100])
def test_the_second_decoder_gives_the_same_levels_and_code(codec, learned_model, size, quality):
    data = codec.encode(photo(*size, seed=size[0]), quality=quality, method="learned")
    sdc = SdcFile.from_bytes(data)
    model = second_decoder.Model.from_manifest(json.loads((learned_model / "manifest.json").read_text()),
                                               learned_model)
    decoded = second_decoder.decode(data, model)
    code = codec.method("learned").code.synthesis_input(sdc.model_params, sdc.payload, sdc.latent_shape)
    assert code.dtype == decoded.latent.dtype and np.array_equal(code, decoded.latent)


def test_the_code_is_the_same_at_every_thread_count(learned_model):
    data = sdlite.Codec.load(learned_model).encode(photo(64, 48), quality=60, method="learned")
    sdc = SdcFile.from_bytes(data)
    codes = [sdlite.Codec.load(learned_model, threads=threads).method("learned").code.synthesis_input(
        sdc.model_params, sdc.payload, sdc.latent_shape) for threads in (1, 2)]
    assert np.array_equal(*codes)


def test_file_size_grows_with_quality(codec):
    sizes = [len(codec.encode(photo(64, 48), quality=q, method="learned")) for q in (0, 50, 100)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_rate_control_keeps_within_the_budget(codec):
    smallest = len(codec.encode(photo(64, 48), quality=0, method="learned"))
    data = codec.encode(photo(64, 48), size=smallest + 100, method="learned")
    assert smallest <= len(data) <= smallest + 100


def test_effort_needs_the_code_gradient_graph(codec):
    # train-codec adds no gradient graph (it has no torch decoder): effort is refused in one line
    with pytest.raises(sdlite.SdliteError, match="effort above 0 is not available with the learned method"):
        codec.encode(photo(40, 24), method="learned", effort=1)


@pytest.fixture(scope="module")
def built(learned_model, tiny_vae_folder, tmp_path_factory):
    """The tiny VAE exported again with the trained codec's weights: what `build` does with a shipped one."""
    from conftest import export_model

    weights = learned_model.parents[1] / "training" / "latent_codec.safetensors"
    return export_model(tiny_vae_folder, tmp_path_factory.mktemp("built"), "--precisions", "none",
                        "--latent-codec", str(weights))


def test_build_exports_the_codec_with_its_gradient_graph(built):
    manifest = json.loads((built / "manifest.json").read_text())
    codec = manifest["latent_codec"]
    assert {"analysis", "hyper_analysis", "synthesis", "code_vjp"} <= set(codec)
    assert all((built / codec[name]["file"]).is_file() for name in ("analysis", "synthesis", "code_vjp"))
    assert manifest["verification"]["latent_codec_psnr_db"] > 0


@pytest.mark.parametrize("quality", [20, 80])
def test_effort_searches_the_code_and_never_loses_on_its_objective(built, quality):
    codec = sdlite.Codec.load(built)
    picture = photo(64, 48, seed=3)

    def objective(data: bytes) -> tuple[float, float]:
        difference = np.asarray(codec.decode(data), np.float64) - np.asarray(picture, np.float64)
        return float(np.mean(difference**2)), 8 * len(data) / (64 * 48)

    plain, searched = (objective(codec.encode(picture, quality=quality, method="learned", effort=e)) for e in (0, 1))
    assert SdcFile.from_bytes(codec.encode(picture, quality=quality, method="learned", effort=1)).method == Learned.id
    # The search's own objective (distortion + rate weight x bpp) is never worse; here its distortion
    # alone falls or its rate does.
    assert searched[0] <= plain[0] or searched[1] <= plain[1]


@pytest.mark.parametrize("block, message", [(b"\xff\xff", "rate level"), (b"\x00", "not 2 bytes")])
def test_a_forged_model_block_is_refused(codec, block, message):
    sdc = SdcFile.from_bytes(codec.encode(photo(40, 24), method="learned"))
    forged = SdcFile(sdc.latent_space_id, sdc.width, sdc.height, sdc.latent_shape, sdc.step, sdc.quality, block,
                     sdc.payload, sdc.method).to_bytes()
    with pytest.raises(sdlite.SdliteError, match=message):
        codec.decode(forged)


def test_extra_payload_words_are_refused(codec):
    sdc = SdcFile.from_bytes(codec.encode(photo(40, 24), method="learned"))
    forged = SdcFile(sdc.latent_space_id, sdc.width, sdc.height, sdc.latent_shape, sdc.step, sdc.quality,
                     sdc.model_params, sdc.payload + bytes(8), sdc.method).to_bytes()
    with pytest.raises(sdlite.SdliteError, match="corrupt"):
        codec.decode(forged)
