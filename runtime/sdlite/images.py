"""Pictures in and out: any file or PIL image to an RGB array in [0, 1] padded for the encoder, and back.

What comes in is untrusted: the pixel count is checked from the file's header before any pixel is
decoded, colours are brought to sRGB through the file's ICC profile, and whatever sdlite cannot store
(alpha, frames after the first) is dropped with a warning.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import SdliteError, SdliteWarning

ImageSource = Image.Image | str | Path | bytes

# The ICC colour space each family of modes is read with; other modes go to RGB without a profile.
_PROFILE_MODES = {"RGB ": "RGB", "GRAY": "L", "CMYK": "CMYK"}
_SRGB = ImageCms.createProfile("sRGB")
ROWS_PER_BAND = 128


def open_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """An sRGB image, upright, from a PIL image, a path or the bytes of an image file."""
    where = "" if isinstance(source, (bytes, Image.Image)) else f"{source}: "
    if isinstance(source, Image.Image):
        image = source
        check_pixels(image.size, max_pixels, where)
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            check_pixels(image.size, max_pixels, where)  # from the header, before any pixel is decoded
            image.load()
        except UnidentifiedImageError:
            raise SdliteError(f"{where}not an image file that Pillow can read") from None
        except Image.DecompressionBombError as exc:
            raise SdliteError(f"{where}{exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise SdliteError(f"{where}cannot read image: {exc}") from None
    if getattr(image, "is_animated", False):
        warnings.warn(SdliteWarning("animated image: only the first frame is encoded"), stacklevel=2)
    try:
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError) as exc:  # a mode Pillow cannot convert, broken EXIF
        raise SdliteError(f"{where}cannot convert a {image.mode} image to RGB: {exc}") from None


def check_pixels(size: tuple[int, int], max_pixels: int | None, where: str = "") -> None:
    """Refuse decompression bombs (Pillow's limit, Image.MAX_IMAGE_PIXELS) and images above sdlite's own."""
    width, height = size
    bomb_limit = Image.MAX_IMAGE_PIXELS
    if bomb_limit and width * height > bomb_limit:
        raise SdliteError(f"{where}image of {width}x{height} pixels is above Pillow's decompression-bomb limit "
                          f"of {bomb_limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)")
    if max_pixels is not None and width * height > max_pixels:
        raise SdliteError(f"{where}image of {width}x{height} pixels is above the limit of {max_pixels} pixels "
                          f"(raise it with --max-pixels)")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        warnings.warn(SdliteWarning("alpha channel dropped: sdlite stores RGB only"), stacklevel=3)
    profile = image.info.get("icc_profile")
    if image.mode == "F":
        image = float_to_grey(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's I -> RGB conversion clips instead of scaling 16-bit values down.
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if profile:
        converted = to_srgb(image, profile)
        if converted is not None:
            return converted
    if image.mode == "La":  # premultiplied grey and alpha: Pillow converts it only by way of LA
        image = image.convert("LA")
    return image if image.mode == "RGB" else image.convert("RGB")


def float_to_grey(image: Image.Image) -> Image.Image:
    """An 8-bit grey image from a floating-point one (a float TIFF): values in [0, 1] are scaled to 0-255,
    values in [0, 255] taken as they are. Pillow's own conversion clips, which turns [0, 1] into black."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise SdliteError("a floating-point image with NaN or infinite values cannot be encoded")
    lowest, highest = values.min(initial=0.0), values.max(initial=0.0)
    if lowest < 0 or highest > 255:
        raise SdliteError(f"a floating-point image must hold values in [0, 1] or [0, 255], not "
                          f"[{lowest:g}, {highest:g}]")
    if highest <= 1:
        values = values * 255.0
    return Image.fromarray(np.rint(values).astype(np.uint8), "L")


def to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image | None:
    """The image converted from its ICC profile to sRGB, or None (with a warning) when that cannot be done."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        mode = _PROFILE_MODES.get(profile.profile.xcolor_space)
        if mode is None:
            raise ImageCms.PyCMSError(f"a {profile.profile.xcolor_space.strip()} profile is not supported")
        if image.mode != mode:
            if mode == "CMYK" or image.mode == "CMYK":
                raise ImageCms.PyCMSError(f"a {mode} profile does not fit a {image.mode} image")
            image = image.convert(mode)
        return ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        warnings.warn(SdliteWarning(f"ICC profile ignored, colours taken as sRGB: {exc}"), stacklevel=4)
        return None


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
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    # A band of rows at a time, so that a large picture's float copy is a band's, not the picture's.
    for top in range(0, height, ROWS_PER_BAND):
        band = array[0, :, top:min(top + ROWS_PER_BAND, height), :width].transpose(1, 2, 0) * 255.0
        np.nan_to_num(band, copy=False, nan=0.0)
        np.rint(band, out=band)
        np.clip(band, 0, 255, out=band)
        pixels[top:top + ROWS_PER_BAND] = band
    return Image.fromarray(pixels, "RGB")


def psnr(decoded: Image.Image, original: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two RGB pictures of one size, over their 8-bit values."""
    difference = np.asarray(decoded, np.float64) - np.asarray(original, np.float64)
    mse = float(np.mean(difference**2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
