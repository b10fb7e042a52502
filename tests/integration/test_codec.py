"""The Python API end to end on a small random VAE: sizes, modes, quality, hostile and foreign files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import sdlite
from sdlite.container import SdcFile

from sdlite import images
from sdlite.methods import quantizer
from sdlite.methods.uniform import AdaptiveCategorical

from pictures import photo, psnr


@pytest.fixture(scope="module")
def codec(tiny_model):
    return sdlite.Codec.load(tiny_model)


@pytest.mark.parametrize("size", [(97, 61), (1, 1), (7, 3), (64, 64), (8, 200)])
def test_round_trip_gives_back_the_original_size(codec, size):
    image = photo(*size)
    decoded = codec.decode(codec.encode(image))
    assert decoded.size == size and decoded.mode == "RGB"


def test_file_records_what_the_decoder_needs(codec, tiny_model):
    data = codec.encode(photo(97, 61), quality=70)
    sdc = SdcFile.from_bytes(data)
    assert (sdc.width, sdc.height, sdc.quality) == (97, 61, 70)
    assert sdc.latent_shape == (4, 8, 13)  # sides rounded up to multiples of 8, then divided
    assert sdc.latent_space_id == sdlite.Manifest.from_json((tiny_model / "manifest.json").read_text()).latent_space_id


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "PA", "CMYK", "1", "I;16", "I"])
def test_any_image_mode_is_encoded(codec, mode):
    if mode in ("I;16", "I"):
        ramp = np.linspace(0, 65535, 33 * 17).reshape(17, 33)
        image = Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        image = photo(33, 17).convert("P").convert(mode) if mode == "PA" else photo(33, 17).convert(mode)
    assert image.mode == mode
    decoded = codec.decode(codec.encode(image))
    assert decoded.size == (33, 17)


def test_alpha_is_dropped_with_a_warning(codec):
    with pytest.warns(sdlite.SdliteWarning, match="alpha"):
        codec.encode(photo(16, 16).convert("RGBA"))


def test_exif_orientation_is_applied(codec):
    image = photo(40, 16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = codec.decode(codec.encode(buffer.getvalue()))
    assert decoded.size == (16, 40)


def test_quality_extremes_order_the_file_sizes(codec):
    image = photo(96, 64)
    smallest = codec.encode(image, quality=0)
    largest = codec.encode(image, quality=100)
    assert len(smallest) < len(codec.encode(image, quality=75)) < len(largest)
    assert codec.decode(smallest).size == codec.decode(largest).size == (96, 64)


def test_quality_outside_0_to_100_is_refused(codec):
    with pytest.raises(sdlite.SdliteError, match="quality"):
        codec.encode(photo(8, 8), quality=101)


def test_decoding_is_deterministic_and_repeatable(codec):
    data = codec.encode(photo(50, 30))
    assert codec.encode(photo(50, 30)) == data
    assert np.array_equal(np.asarray(codec.decode(data)), np.asarray(codec.decode(data)))


@pytest.mark.parametrize("quality", [0, 30, 100])
def test_the_stored_latent_is_within_half_a_step_of_the_encoders(codec, quality):
    image = photo(64, 48)
    latent = codec.networks.encoder(images.to_array(image, 8))[0]
    sdc = SdcFile.from_bytes(codec.encode(image, quality=quality, method="uniform"))
    levels = AdaptiveCategorical.from_bytes(sdc.model_params, sdc.latent_shape).decompress(sdc.payload, sdc.latent_shape)
    error = np.abs(quantizer.dequantize(levels, sdc.step) - latent)
    assert error.max() <= sdc.step / 2 * (1 + 1e-5)


def test_a_finer_step_decodes_closer_to_the_unquantized_latent(codec):
    # With random weights the picture is no likeness, but the decode of a finer latent must come
    # closer to the decode of the exact latent: proof that the whole chain fits together.
    image = photo(64, 48)
    exact = images.from_array(codec.networks.decoder(codec.networks.encoder(images.to_array(image, 8))), 64, 48)
    fine, coarse = (codec.decode(codec.encode(image, quality=q)) for q in (100, 10))
    assert psnr(fine, exact) > psnr(coarse, exact)


def test_a_file_from_another_latent_space_is_refused(codec, other_model):
    foreign = sdlite.Codec.load(other_model).encode(photo(32, 32))
    with pytest.raises(sdlite.SdliteError, match="another latent space"):
        codec.decode(foreign)


def test_header_sizes_that_do_not_fit_the_model_are_refused(codec):
    sdc = SdcFile.from_bytes(codec.encode(photo(40, 24)))
    forged = SdcFile(sdc.latent_space_id, 4000, 24, sdc.latent_shape, sdc.step, sdc.quality,
                     sdc.model_params, sdc.payload).to_bytes()
    with pytest.raises(sdlite.SdliteError, match="latent shape"):
        codec.decode(forged)


def test_a_tampered_graph_is_refused(tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    with open(copy / "decoder.onnx", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\x00" * 4)
    with pytest.raises(sdlite.SdliteError, match="sha256"):
        # float32: the graph tampered with (auto may take the int8 variant)
        sdlite.Codec.load(copy, precision="fp32").decode(sdlite.Codec.load(tiny_model).encode(photo(8, 8)))


