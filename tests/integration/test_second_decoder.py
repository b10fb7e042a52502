"""docs/FORMAT.md is complete: a decoder written from it alone (second_decoder.py) agrees with sdlite's.

The second decoder must give the same integer levels and bit-identical float32 latent as the real one
on files from the real encoder, and refuse what the real one refuses. Its range decoder against
constriction, and files made without a model, are in tests/unit (test_range_coder.py,
test_format_document.py).
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

import sdlite
from sdlite.methods import METHODS
from sdlite.container import SdcFile
from sdlite.methods.uniform import AdaptiveCategorical

import second_decoder
from pictures import photo


@pytest.fixture(scope="module")
def codec(tiny_model):
    return sdlite.Codec.load(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model):
    return second_decoder.Model.from_manifest(json.loads((tiny_model / "manifest.json").read_text()))


def real_decode(codec, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The real decoder up to the latent: container, compatibility, entropy model, dequantization."""
    sdc = SdcFile.from_bytes(data)
    codec.check_compatible(sdc)
    levels = AdaptiveCategorical.from_bytes(sdc.model_params, sdc.latent_shape).decompress(
        sdc.payload, sdc.latent_shape)
    return levels, codec.decode_latent(sdc)  # the method's dequantization, with its checks


def outcome(decode, data: bytes):
    """What a decoder makes of the bytes: its levels and latent's bytes, or that it refused them."""
    try:
        levels, latent = decode(data)
    except (sdlite.SdliteError, second_decoder.FormatError):
        return "refused"
    return levels.tobytes(), latent.dtype, latent.tobytes()


def both_outcomes(codec, model, data: bytes):
    def second(data):
        decoded = second_decoder.decode(data, model)
        return decoded.levels, decoded.latent

    return outcome(lambda d: real_decode(codec, d), data), outcome(second, data)


@pytest.mark.parametrize("size, quality, seed", [
    ((97, 61), 100, 0), ((64, 48), 100, 1), ((8, 200), 95, 2), ((40, 24), 90, 3), ((33, 17), 75, 4),
    ((120, 80), 85, 5), ((97, 61), 50, 0), ((1, 1), 0, 0),
])
def test_second_decoder_gives_the_real_decoders_levels_and_latent(codec, model, size, quality, seed):
    data = codec.encode(photo(*size, seed=seed), quality=quality, method="uniform")
    assert quality < 75 or len(SdcFile.from_bytes(data).payload) > 0
    levels, latent = real_decode(codec, data)
    decoded = second_decoder.decode(data, model)
    assert (decoded.width, decoded.height) == size
    assert decoded.levels.dtype == np.int32 and np.array_equal(decoded.levels, levels)
    assert decoded.latent.dtype == np.float32 and decoded.latent.tobytes() == latent.tobytes()


def test_a_latent_of_single_level_channels_has_an_empty_payload(codec, model):
    data = codec.encode(photo(1, 1), quality=0, method="uniform")
    assert SdcFile.from_bytes(data).payload == b""
    assert both_outcomes(codec, model, data)[1] != "refused"


def test_latent_space_id_is_derived_from_the_manifest_name(codec, model):
    assert SdcFile.from_bytes(codec.encode(photo(16, 16), method="uniform")).latent_space_id == model.latent_space_id


def test_crc32_is_the_zlib_crc(codec):
    data = codec.encode(photo(24, 16), method="uniform")
    assert second_decoder.crc32(data) == zlib.crc32(data)
    assert second_decoder.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value


def rebuild(header: bytes, model_block: bytes, payload: bytes) -> bytes:
    """A file with these parts and a correct CRC, whatever they hold."""
    body = header + struct.pack("<I", len(model_block)) + model_block + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    sdc = SdcFile.from_bytes(data)
    header = data[:offset] + value + data[offset + len(value) : 33]
    return rebuild(header, sdc.model_params, sdc.payload)


def model_block_with(data: bytes, lowest: int, size: int) -> bytes:
    """The file's model block with channel 0's level range replaced."""
    sdc = SdcFile.from_bytes(data)
    entropy_model = AdaptiveCategorical.from_bytes(sdc.model_params, sdc.latent_shape)
    entropy_model.lowest[0], entropy_model.sizes[0] = lowest, size
    return entropy_model.to_bytes()


def with_blocks(data: bytes, model_block: bytes | None = None, payload: bytes | None = None) -> bytes:
    sdc = SdcFile.from_bytes(data)
    return rebuild(data[:33], sdc.model_params if model_block is None else model_block,
                   sdc.payload if payload is None else payload)


FORGERIES = {
    "bad magic": lambda d: b"\x89SDD" + d[4:],
    "empty": lambda d: b"",
    "magic only": lambda d: d[:4],
    "cut in the header": lambda d: d[:30],
    "cut in the payload": lambda d: d[:-6],
    "no CRC": lambda d: d[:-4],
    "a byte after the CRC": lambda d: d + b"\x00",
    "bad CRC": lambda d: d[:-1] + bytes([d[-1] ^ 1]),
    "a header bit flipped": lambda d: d[:20] + bytes([d[20] ^ 4]) + d[21:],
    "a payload bit flipped": lambda d: d[:-6] + bytes([d[-6] ^ 1]) + d[-5:],
    "version 2": lambda d: patched(d, 4, b"\x02"),
    "method 4, not assigned": lambda d: patched(d, 5, b"\x04"),
    "method 255": lambda d: patched(d, 5, b"\xff"),
    "another latent space": lambda d: patched(d, 6, b"\x00" * 8),
    "zero width": lambda d: patched(d, 14, struct.pack("<I", 0)),
    "too many pixels": lambda d: patched(d, 14, struct.pack("<II", 1 << 15, (1 << 13) + 1)),
    "zero channels": lambda d: patched(d, 22, struct.pack("<H", 0)),
    "latent too tall": lambda d: patched(d, 24, struct.pack("<H", 9)),
    "zero step": lambda d: patched(d, 28, struct.pack("<f", 0.0)),
    "negative step": lambda d: patched(d, 28, struct.pack("<f", -0.25)),
    "NaN step": lambda d: patched(d, 28, struct.pack("<f", float("nan"))),
    "quality 101": lambda d: patched(d, 32, b"\x65"),
    "model block cut": lambda d: with_blocks(d, model_block=SdcFile.from_bytes(d).model_params[:-1]),
    "model block too long": lambda d: with_blocks(d, model_block=SdcFile.from_bytes(d).model_params + b"\x00"),
    "a 6-byte varint": lambda d: with_blocks(d, model_block=b"\x80" * 5 + b"\x00" + model_block_with(d, 0, 2)[1:]),
    "a level below -2047": lambda d: with_blocks(d, model_block=model_block_with(d, -2048, 2)),
    "a level above 2047": lambda d: with_blocks(d, model_block=model_block_with(d, 2047, 2)),
    "an empty level range": lambda d: with_blocks(d, model_block=model_block_with(d, 0, 0)),
    "payload not whole words": lambda d: with_blocks(d, payload=SdcFile.from_bytes(d).payload + b"\x00"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_both_decoders_refuse_the_same_broken_files(codec, model, forgery):
    data = codec.encode(photo(40, 24), quality=90, method="uniform")
    real, second = both_outcomes(codec, model, FORGERIES[forgery](data))
    assert real == second == "refused"


def test_an_unknown_method_is_named_in_the_refusal(codec, model):
    with pytest.raises(second_decoder.FormatError, match="unsupported coding method 7"):
        second_decoder.decode(patched(codec.encode(photo(16, 16), method="uniform"), 5, b"\x07"), model)


def test_both_decoders_agree_on_every_single_bit_flip_with_a_valid_crc(codec, model):
    data = codec.encode(photo(64, 48), quality=100, method="uniform")
    refused = 0
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            if position == 5 and flipped[5] in METHODS:
                continue  # another assigned method: the second decoder implements method 0 only
            if position < len(data) - 4:  # a valid CRC, so that the rules behind it are reached
                flipped[-4:] = struct.pack("<I", zlib.crc32(bytes(flipped[:-4])))
            real, second = both_outcomes(codec, model, bytes(flipped))
            assert real == second, (position, bit)
            refused += real == "refused"
    assert 0 < refused < 8 * len(data)  # some flips decode (payload, step), most are refused
