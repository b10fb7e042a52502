"""The .sdc container: a fixed header, the entropy model's parameters, the payload and a CRC-32.

The layout is specified byte by byte in docs/FORMAT.md; this module is its reference implementation.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from .errors import SdliteError
from .methods import METHODS

MAGIC = b"\x89SDC"
VERSION = 1

# magic, version, method, latent space id, width, height, channels, latent height, latent width, step, quality
_HEADER = struct.Struct("<4sBB8sIIHHHfB")
_LENGTH = struct.Struct("<I")
_CRC = struct.Struct("<I")


@dataclass(frozen=True, repr=False)
class SdcFile:
    latent_space_id: bytes
    width: int
    height: int
    latent_shape: tuple[int, int, int]
    step: float
    quality: int
    model_params: bytes
    payload: bytes
    method: int = 0

    def __repr__(self) -> str:
        """The header's fields, and only the sizes of the parameters and payload (which can be megabytes)."""
        method = METHODS[self.method].name if self.method in METHODS else self.method
        return (f"SdcFile({self.width}x{self.height}, latent {'x'.join(map(str, self.latent_shape))}, "
                f"method {method}, quality {self.quality}, step {self.step:.6g}, "
                f"latent space {self.latent_space_id.hex()}, model parameters {len(self.model_params)} bytes, "
                f"payload {len(self.payload)} bytes)")

    def to_bytes(self) -> bytes:
        channels, latent_height, latent_width = self.latent_shape
        body = _HEADER.pack(
            MAGIC, VERSION, self.method, self.latent_space_id, self.width, self.height,
            channels, latent_height, latent_width, self.step, self.quality,
        )
        body += _LENGTH.pack(len(self.model_params)) + self.model_params
        body += _LENGTH.pack(len(self.payload)) + self.payload
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> SdcFile:
        data = bytes(data)
        if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
            raise SdliteError("not an .sdc file (wrong magic bytes)")
        if len(data) < _HEADER.size + 2 * _LENGTH.size + _CRC.size:
            raise SdliteError("truncated .sdc file: the header is incomplete")
        (_, version, method, space, width, height, channels, latent_height, latent_width, step, quality) = (
            _HEADER.unpack_from(data)
        )
        if version != VERSION:
            raise SdliteError(f"unsupported .sdc format version {version} (this sdlite reads version {VERSION})")
        position = _HEADER.size
        model_params, position = _read_block(data, position, "entropy model parameters")
        payload, position = _read_block(data, position, "payload")
        if len(data) < position + _CRC.size:
            raise SdliteError("truncated .sdc file: the checksum is missing")
        if len(data) > position + _CRC.size:
            raise SdliteError("corrupt .sdc file: unexpected bytes after the checksum")
        (crc,) = _CRC.unpack_from(data, position)
        if crc != zlib.crc32(data[:position]):
            raise SdliteError("corrupt .sdc file: checksum mismatch")
        if method not in METHODS:
            raise SdliteError(f"unsupported coding method {method} in .sdc file")
        if min(width, height, channels, latent_height, latent_width) == 0:
            raise SdliteError("corrupt .sdc file: an image or latent dimension is zero")
        if not 0 < step < math.inf or quality > 100:  # also refuses NaN
            raise SdliteError("corrupt .sdc file: invalid quantizer parameters")
        return cls(space, width, height, (channels, latent_height, latent_width), step, quality,
                   model_params, payload, method)


def _read_block(data: bytes, position: int, what: str) -> tuple[bytes, int]:
    if len(data) < position + _LENGTH.size:
        raise SdliteError(f"truncated .sdc file: the {what} length is missing")
    (length,) = _LENGTH.unpack_from(data, position)
    start = position + _LENGTH.size
    if len(data) < start + length:
        raise SdliteError(f"truncated .sdc file: the {what} {'are' if what.endswith('s') else 'is'} cut short")
    return data[start : start + length], start + length

