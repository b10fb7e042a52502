"""The .sdc container (docs/FORMAT.md sections 2-3) on files made here: what it writes, and every rule by
which it refuses bytes before any method or model sees them."""

from __future__ import annotations

import math
import struct
import zlib

import pytest

import sdlite
from sdlite.container import SdcFile
from sdlite.methods import METHODS


def sample(**fields) -> SdcFile:
    values = dict(latent_space_id=b"12345678", width=40, height=24, latent_shape=(4, 3, 5), step=0.25, quality=50,
                  model_params=bytes(range(11)), payload=bytes(range(100, 124)), method=0)
    return SdcFile(**{**values, **fields})


def resealed(data: bytes) -> bytes:
    """The bytes with their CRC made right again, so that the rules behind the checksum are reached."""
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return resealed(data[:offset] + value + data[offset + len(value):])


def test_a_file_reads_back_as_it_was_written():
    for method in METHODS:
        assert SdcFile.from_bytes(sample(method=method).to_bytes()) == sample(method=method)
    empty = sample(model_params=b"", payload=b"")
    assert SdcFile.from_bytes(empty.to_bytes()) == empty


def test_checksum_is_crc32_of_everything_before_it():
    data = sample().to_bytes()
    assert int.from_bytes(data[-4:], "little") == zlib.crc32(data[:-4])


def test_every_cut_is_refused():
    data = sample().to_bytes()
    for length in range(len(data)):
        with pytest.raises(sdlite.SdliteError, match="truncated|not an .sdc|checksum"):
            SdcFile.from_bytes(data[:length])


def test_every_single_bit_flip_is_refused():
    data = sample().to_bytes()
    for position in range(len(data)):
        for bit in range(8):
            corrupted = bytearray(data)
            corrupted[position] ^= 1 << bit
            with pytest.raises(sdlite.SdliteError):
                SdcFile.from_bytes(bytes(corrupted))


UNASSIGNED_METHOD = next(method for method in range(256) if method not in METHODS)


@pytest.mark.parametrize("change, message", [
    (lambda d: b"\x89SDD" + d[4:], "wrong magic"),
    (lambda d: d + b"\x00", "after the checksum"),
    (lambda d: patched(d, 4, b"\x02"), "version 2"),
    (lambda d: patched(d, 5, bytes([UNASSIGNED_METHOD])), f"coding method {UNASSIGNED_METHOD}"),
    (lambda d: patched(d, 14, struct.pack("<I", 0)), "dimension is zero"),
    (lambda d: patched(d, 18, struct.pack("<I", 0)), "dimension is zero"),
    (lambda d: patched(d, 22, struct.pack("<H", 0)), "dimension is zero"),
    (lambda d: patched(d, 24, struct.pack("<H", 0)), "dimension is zero"),
    (lambda d: patched(d, 26, struct.pack("<H", 0)), "dimension is zero"),
    (lambda d: patched(d, 28, struct.pack("<f", 0.0)), "quantizer"),
    (lambda d: patched(d, 28, struct.pack("<f", -0.25)), "quantizer"),
    (lambda d: patched(d, 28, struct.pack("<f", math.nan)), "quantizer"),
    (lambda d: patched(d, 28, struct.pack("<f", math.inf)), "quantizer"),
    (lambda d: patched(d, 32, b"\x65"), "quantizer"),
    (lambda d: patched(d, 33, struct.pack("<I", 12)), "truncated|checksum"),  # the model block claims a byte more
    (lambda d: patched(d, 33, struct.pack("<I", 1 << 31)), "truncated"),
])
def test_a_header_breaking_a_rule_is_refused_with_a_valid_checksum(change, message):
    with pytest.raises(sdlite.SdliteError, match=message):
        SdcFile.from_bytes(change(sample().to_bytes()))


def test_an_sdc_file_shows_its_header_not_its_payload():
    sdc = SdcFile(b"\x01" * 8, 768, 512, (32, 64, 96), 0.5, 50, b"\x07" * 198, b"\xab" * 100_000, 2)
    text = repr(sdc)
    assert len(text) < 300 and "payload 100000 bytes" in text and "768x512" in text and "predictive" in text
    assert str(sdc) == text
