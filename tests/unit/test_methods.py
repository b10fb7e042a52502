"""The coding methods' quantizers and entropy models on synthetic latents, without a network: per-channel
steps, bit-exact round trips of the predictive, uniform and palette model blocks and payloads, the
pinned predictive bitstream, and hostile parameters."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import sdlite
from sdlite.methods import palette, quantizer
from sdlite.methods.palette import PaletteModel, palette_size
from sdlite.methods.predictive import DEAD_ZONE, LARGEST_RESIDUAL, PredictiveModel
from sdlite.methods.uniform import AdaptiveCategorical


def smooth_latent(channels=5, height=9, width=11, seed=0) -> np.ndarray:
    """Correlated along rows and columns, with channel scales from 0.3 to 1.5, like a real latent."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(channels, height + 2, width + 2))
    smooth = (noise[:, 1:-1, 1:-1] + noise[:, :-2, 1:-1] + noise[:, 1:-1, :-2]) / np.sqrt(3)
    return (smooth * np.linspace(0.3, 1.5, channels)[:, None, None] + 0.2).astype(np.float32)


# -- per-channel steps -------------------------------------------------------------------------------

def test_step_multipliers_follow_one_over_sqrt_sensitivity():
    codes = quantizer.step_codes([16.0, 1.0, 1 / 16], 3)
    steps = quantizer.channel_steps(0.5, codes)
    assert list(codes) == [-16, 0, 16]
    assert np.allclose(steps, [0.125, 0.5, 2.0])
    assert list(quantizer.step_codes([], 4)) == [0, 0, 0, 0]


def test_written_out_octave_fractions_are_the_powers_of_two():
    assert np.allclose(quantizer._OCTAVE_FRACTIONS, [2 ** (j / 8) for j in range(8)], rtol=1e-15, atol=0)
    codes = np.arange(-quantizer.LARGEST_STEP_CODE, quantizer.LARGEST_STEP_CODE + 1)
    assert np.allclose(quantizer.channel_steps(1.0, codes), 2.0 ** (codes / 8), rtol=1e-7)


def test_step_codes_are_clipped_for_extreme_sensitivities():
    codes = quantizer.step_codes([1e12, 1.0, 1e-12], 3)
    assert np.abs(codes.astype(int)).max() <= quantizer.LARGEST_STEP_CODE


# -- entropy models: bit-exact round trips of symbol arrays -----------------------------------------

def predictive_model(latent, step=0.3, codes=None):
    codes = np.zeros(latent.shape[0], np.int8) if codes is None else codes
    return PredictiveModel.quantize(latent, step, codes)


@pytest.mark.parametrize("step", [0.05, 0.3, 1.5, 20.0])
def test_predictive_levels_round_trip_exactly(step):
    latent = smooth_latent(channels=6, height=13, width=17)
    model, levels = predictive_model(latent, step)
    decoded_model = PredictiveModel.from_bytes(model.to_bytes(), latent.shape)
    assert decoded_model.to_bytes() == model.to_bytes()
    assert np.array_equal(decoded_model.decompress(model.compress(levels), latent.shape), levels)


def test_predictive_coder_takes_any_levels_within_its_alphabet():
    rng = np.random.default_rng(3)
    levels = np.clip(np.rint(rng.laplace(0, 3, (4, 6, 7))), -LARGEST_RESIDUAL, LARGEST_RESIDUAL).astype(np.int32)
    levels[0, 0, 0] = LARGEST_RESIDUAL
    model = PredictiveModel(np.zeros(4), np.zeros(4), np.zeros((4, 3)), np.zeros(4), LARGEST_RESIDUAL)
    assert np.array_equal(model.decompress(model.compress(levels), levels.shape), levels)


def test_predictive_payload_is_pinned():
    """The bitstream is the format: a change in contexts, counts or coder shows up here. Integer
    inputs only, so the pin holds on every machine."""
    rng = np.random.default_rng(7)
    shape = (3, 8, 10)
    levels = (rng.integers(-4, 5, shape) * rng.integers(0, 2, shape)).astype(np.int32)
    model = PredictiveModel([-3, 0, 5], [1, 0, -2], [[10, 20, 5], [0, 30, 0], [-5, 40, 10]], [20, 0, 64], 4)
    payload = model.compress(levels)
    assert hashlib.sha256(payload).hexdigest()[:16] == PINNED_PREDICTIVE
    assert np.array_equal(PredictiveModel.from_bytes(model.to_bytes(), shape).decompress(payload, shape), levels)


PINNED_PREDICTIVE = "b2103b3e74bcddf7"


def test_uniform_and_palette_symbols_round_trip_exactly():
    latent = smooth_latent()
    model, levels = AdaptiveCategorical.quantize(latent, 0.1, None)
    again = AdaptiveCategorical.from_bytes(model.to_bytes(), latent.shape)
    assert np.array_equal(again.decompress(model.compress(levels), latent.shape), levels)
    palette, indices = PaletteModel.quantize(latent, 90)
    again = PaletteModel.from_bytes(palette.to_bytes(), latent.shape)
    assert np.array_equal(again.decompress(palette.compress(indices), latent.shape), indices)
    assert np.array_equal(again.palette, palette.palette)


# -- quantizers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0.05, 0.4])
def test_decoder_rebuilds_the_encoders_reconstruction_within_the_dead_zone(step):
    latent = smooth_latent(channels=4, height=10, width=12, seed=1)
    codes = np.array([-4, 0, 3, 8], np.int8)
    model, levels = predictive_model(latent, step, codes)
    _, encoder_side, _ = model._closed_loop(latent, step)
    decoder_side = PredictiveModel.from_bytes(model.to_bytes(), latent.shape).dequantize(levels, step)
    assert np.array_equal(encoder_side, decoder_side)
    steps = quantizer.channel_steps(step, codes)[:, None, None]
    worst = max(DEAD_ZONE, 1 - DEAD_ZONE + model.offsets.max() / 256)
    assert np.all(np.abs(decoder_side - latent) <= steps * worst * (1 + 1e-5))


def test_reconstruction_offsets_pull_nonzero_levels_towards_zero_at_coarse_steps():
    model, _ = predictive_model(smooth_latent(channels=3, height=40, width=40, seed=2), 1.0)
    assert model.offsets.max() > 0 and np.all(model.offsets <= 128)


def test_prediction_lowers_the_rate_of_a_correlated_latent():
    latent = smooth_latent(channels=4, height=32, width=32)
    model, levels = predictive_model(latent, 0.1)
    flat = PredictiveModel(model.step_codes, model.means, np.zeros((4, 3)), model.offsets, 0)
    flat_levels, _, _ = flat._closed_loop(latent, 0.1)
    flat.largest = int(np.abs(flat_levels).max())
    assert np.abs(model.weights).sum() > 0
    assert len(model.compress(levels)) < len(flat.compress(flat_levels))


def test_palette_has_the_seeds_256_entries_at_quality_100():
    assert palette_size(100) == 256 and palette_size(75) == 128 and palette_size(0) == palette.SMALLEST_PALETTE == 16
    latent = smooth_latent(channels=4, height=24, width=24)
    model, indices = PaletteModel.quantize(latent, 100)
    assert len(model.palette) == 256 and indices.shape == (1, 24, 24)
    error = np.abs(model.dequantize(indices, 1.0) - latent)
    assert error.mean() < 0.3 * np.abs(latent).mean()  # dithering trades error for texture


# -- parameters from hostile files -------------------------------------------------------------------

def test_hostile_predictive_parameters_are_refused():
    model, _ = predictive_model(smooth_latent(channels=2), 0.3)
    shape = (2, 9, 11)
    good = bytearray(model.to_bytes())
    for position, value in [(1, 0x01), (2, 0x7F), (6, 200), (8, 0x7F), (9, 0x7F), (10, 0x7F)]:
        bad = bytearray(good)
        bad[position] = value
        with pytest.raises(sdlite.SdliteError):
            PredictiveModel.from_bytes(bytes(bad), shape)
    with pytest.raises(sdlite.SdliteError):
        PredictiveModel.from_bytes(bytes(good[:-1]), shape)


def test_hostile_palette_parameters_are_refused():
    model, _ = PaletteModel.quantize(smooth_latent(channels=2), 80)
    good = model.to_bytes()
    for bad in (good[:-1], b"\x00\x00" + good[2:], b"\x01\x01" + good[2:],
                good[:2] + np.float32(np.nan).tobytes() + good[6:]):
        with pytest.raises(sdlite.SdliteError):
            PaletteModel.from_bytes(bad, (2, 9, 11))


def test_a_row_coded_in_pieces_gives_the_same_stream(monkeypatch):
    from sdlite.methods import predictive

    model, levels = predictive_model(smooth_latent(channels=4, height=6, width=30), 0.1)
    whole = model.compress(levels)
    monkeypatch.setattr(predictive, "CHUNK_ENTRIES", 7 * (2 * model.largest + 1))
    assert model.compress(levels) == whole
    assert np.array_equal(model.decompress(whole, levels.shape), levels)


# -- the quality scale ----------------------------------------------------------------------------------

def test_residuals_beyond_the_alphabet_widen_the_channels_step_instead_of_clipping():
    """Clipped levels would leave the decoded latent far from the encoder's at fine steps, so that a
    higher quality gave a worse picture: the channel's step grows until its residuals fit."""
    latent = smooth_latent(channels=4, height=12, width=14, seed=4) * 6
    codes = np.array([-16, -8, 0, 4], np.int8)
    step = 0.02
    model, levels = predictive_model(latent, step, codes)
    assert np.all(model.step_codes >= codes) and np.any(model.step_codes > codes)
    assert np.abs(levels).max() <= LARGEST_RESIDUAL
    decoded = PredictiveModel.from_bytes(model.to_bytes(), latent.shape).dequantize(levels, step)
    steps = quantizer.channel_steps(step, model.step_codes)[:, None, None]
    worst = max(DEAD_ZONE, 1 - DEAD_ZONE + model.offsets.max() / 256)
    assert np.all(np.abs(decoded - latent) <= steps * worst * (1 + 1e-5))


def test_the_step_falls_as_quality_rises_through_the_calibrated_points():
    steps = [float(quantizer.step_for_quality(q)) for q in range(0, 101)]
    assert all(a > b for a, b in zip(steps, steps[1:]))
    assert (steps[0], steps[50], steps[100]) == (quantizer.COARSEST_STEP, quantizer.DEFAULT_STEP, quantizer.FINEST_STEP)
    assert sdlite.DEFAULT_QUALITY == 50
