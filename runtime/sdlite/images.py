"""Pictures in and out: any file or PIL image to an RGB array in [0, 1] padded for the encoder, and back."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SdliteError, SdliteWarning

ImageSource = Image.Image | str | Path | bytes


def open_image(source: ImageSource) -> Image.Image:
    """An RGB image, upright, from a PIL image, a path or the bytes of an image file."""
    if isinstance(source, Image.Image):
        image = source
    else:
        where = "" if isinstance(source, bytes) else f"{source}: "
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()
        except UnidentifiedImageError:
            raise SdliteError(f"{where}not an image file that Pillow can read") from None
        except Image.DecompressionBombError as exc:
            raise SdliteError(f"{where}{exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise SdliteError(f"{where}cannot read image: {exc}") from None
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        warnings.warn(SdliteWarning("alpha channel dropped: sdlite stores RGB only"), stacklevel=3)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's I -> RGB conversion clips instead of scaling 16-bit values down.
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def padded_size(width: int, height: int, factor: int) -> tuple[int, int]:
    return -(-width // factor) * factor, -(-height // factor) * factor


def to_array(image: Image.Image, factor: int) -> np.ndarray:
    """NCHW float32 in [0, 1], its sides padded up to multiples of `factor` by repeating the edges."""
    width, height = image.size
    padded_width, padded_height = padded_size(width, height, factor)
    # Padded and transposed while still 8-bit, so a large picture is held in float32 only once.
    pixels = np.pad(np.asarray(image), ((0, padded_height - height), (0, padded_width - width), (0, 0)), mode="edge")
    array = pixels.transpose(2, 0, 1)[None].astype(np.float32, order="C")
    array /= 255.0
    return array


def from_array(array: np.ndarray, width: int, height: int) -> Image.Image:
    """The decoder's NCHW output in [0, 1], cropped back to the image's own size."""
    pixels = array[0, :, :height, :width].transpose(1, 2, 0) * 255.0  # the one float copy, then worked in place
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")
