"""Every kind of picture a user has, and files that are not pictures: an image, or one clear line."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

import sdlite
from sdlite import images

from conftest import run
from pictures import photo


def swapped_primaries_profile() -> bytes:
    """An RGB ICC profile whose red and blue primaries are swapped: red pixels in it are sRGB blue."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack_from(">I", data, 128)
    entries = {bytes(data[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    data[red + 4 : red + 12], data[blue + 4 : blue + 12] = data[blue + 4 : blue + 12], data[red + 4 : red + 12]
    return bytes(data)


def png(width: int, height: int, depth: int = 8, rows: bytes = b"") -> bytes:
    """An RGB PNG written by hand: Pillow writes no 16-bit RGB, and a bomb is its header alone."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    return png(width, height)


def sixteen_bit_rgb() -> bytes:
    pixels = (np.asarray(photo(24, 16), dtype=np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 before each row
    return png(24, 16, 16, rows)


def saved(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def animation(format: str) -> bytes:
    frames = [photo(24, 16, seed) for seed in range(3)]
    return saved(frames[0], format, save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    return saved(photo(40, 16), "JPEG", exif=exif)


def sixteen_bit_grey() -> bytes:
    return saved(Image.fromarray(np.linspace(0, 65535, 30 * 20).reshape(20, 30).astype(np.uint16)), "PNG")


# name: (file bytes, expected size after decoding or None for a refusal, what the one line says)
ODD_FILES = {
    "rgba.png": (lambda: saved(photo(24, 16).convert("RGBA"), "PNG"), (24, 16), "alpha channel dropped"),
    "la.png": (lambda: saved(photo(24, 16).convert("LA"), "PNG"), (24, 16), "alpha channel dropped"),
    "palette.png": (lambda: saved(photo(24, 16).convert("P"), "PNG"), (24, 16), ""),
    "palette-transparent.png": (lambda: saved(photo(24, 16).convert("P"), "PNG", transparency=0), (24, 16),
                                "alpha channel dropped"),
    "cmyk.jpg": (lambda: saved(photo(24, 16).convert("CMYK"), "JPEG"), (24, 16), ""),
    "cmyk-tiff.tif": (lambda: saved(photo(24, 16).convert("CMYK"), "TIFF"), (24, 16), ""),
    "grey16.png": (sixteen_bit_grey, (30, 20), ""),
    "rgb48.png": (sixteen_bit_rgb, (24, 16), ""),
    "grey.png": (lambda: saved(photo(24, 16).convert("L"), "PNG"), (24, 16), ""),
    "bilevel.png": (lambda: saved(photo(24, 16).convert("1"), "PNG"), (24, 16), ""),
    "float.tif": (lambda: saved(photo(24, 16).convert("F"), "TIFF"), (24, 16), ""),
    "exif-rotated.jpg": (exif_rotated_jpeg, (16, 40), ""),
    "icc.png": (lambda: saved(photo(24, 16), "PNG", icc_profile=swapped_primaries_profile()), (24, 16), ""),
    "broken-icc.png": (lambda: saved(photo(24, 16), "PNG", icc_profile=b"not a profile"), (24, 16),
                       "ICC profile ignored"),
    "animated-gif.gif": (lambda: animation("GIF"), (24, 16), "only the first frame"),
    "animated-png.png": (lambda: animation("PNG"), (24, 16), "only the first frame"),
    "animated-webp.webp": (lambda: animation("WEBP"), (24, 16), "only the first frame"),
    "one-pixel.png": (lambda: saved(photo(1, 1), "PNG"), (1, 1), ""),
    "seven-by-three.png": (lambda: saved(photo(7, 3), "PNG"), (7, 3), ""),
    "not-an-image.txt": (lambda: b"hello, this is text\n", None, "not an image file"),
    "empty.png": (lambda: b"", None, "not an image file"),
    "truncated.png": (lambda: saved(photo(64, 64), "PNG")[:200], None, "cannot read image"),
    "truncated-jpeg.jpg": (lambda: saved(photo(64, 64), "JPEG")[:300], None, "cannot read image"),
    "bomb.png": (lambda: png_header_only(30000, 30000), None, "decompression bomb"),
    "near-bomb.png": (lambda: png_header_only(10000, 10000), None, "decompression-bomb limit"),
    "too-large.png": (lambda: png_header_only(5000, 5000), None, "above the limit of"),
}


@pytest.fixture(scope="module")
def codec(tiny_model):
    return sdlite.Codec.load(tiny_model)


@pytest.mark.parametrize("name", ODD_FILES)
def test_odd_file_through_the_api(codec, name, recwarn):
    make, size, message = ODD_FILES[name]
    if size is None:
        with pytest.raises(sdlite.SdliteError, match=message) as refused:
            codec.encode(make())
        assert "\n" not in str(refused.value)
        return
    decoded = codec.decode(codec.encode(make()))
    assert decoded.size == size and decoded.mode == "RGB"
    warned = [str(w.message) for w in recwarn if issubclass(w.category, sdlite.SdliteWarning)]
    assert [message in w for w in warned] == ([True] if message else []), warned
    assert all(issubclass(w.category, sdlite.SdliteWarning) for w in recwarn), [str(w.message) for w in recwarn]


def test_every_odd_file_gives_the_user_one_clear_line_at_most(tmp_path, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (make, _, _) in ODD_FILES.items():
        (folder / name).write_bytes(make())
    out = tmp_path / "out"
    names = [str(folder / name) for name in ODD_FILES]
    result = run(sys.executable, "-m", "sdlite.cli", "encode", *names, "-o", f"{out}/", "--model", str(tiny_model))
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("sdlite:")]
    for name, (_, size, message) in ODD_FILES.items():
        mine = [line for line in lines if f" {folder / name}: " in line]
        assert len(mine) == (1 if message else 0), (name, mine)
        if message:
            assert message in mine[0] and mine[0].startswith("sdlite: error:" if size is None else "sdlite: warning:")
        assert (out / (Path(name).stem + ".sdc")).exists() == (size is not None), name


def test_icc_colours_are_converted_to_srgb():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    tagged = Image.open(io.BytesIO(saved(red, "PNG", icc_profile=swapped_primaries_profile())))
    converted = np.asarray(images.open_image(tagged)).astype(int)
    assert converted[0, 0, 2] > 200 and converted[0, 0, 0] < 60  # the profile's red primary is sRGB's blue
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    picture = photo(16, 8)
    same = images.open_image(Image.open(io.BytesIO(saved(picture, "PNG", icc_profile=srgb))))
    assert np.array_equal(np.asarray(same), np.asarray(picture))  # an sRGB profile changes nothing


def test_premultiplied_modes_are_converted(codec):
    for mode in ("La", "RGBa"):
        image = photo(12, 8).convert("RGBA").convert(mode) if mode == "RGBa" else Image.new("La", (12, 8))
        with pytest.warns(sdlite.SdliteWarning, match="alpha"):
            assert codec.decode(codec.encode(image)).size == (12, 8)


def test_the_pixel_limit_is_checked_before_any_pixel_is_decoded(tiny_model):
    small = sdlite.Codec.load(tiny_model, max_pixels=100)
    assert small.decode(small.encode(photo(10, 10))).size == (10, 10)
    with pytest.raises(sdlite.SdliteError, match="above the limit of 100 pixels"):
        small.encode(photo(11, 10))
    with pytest.raises(sdlite.SdliteError, match="above the limit of 100 pixels"):
        small.decode(sdlite.Codec.load(tiny_model).encode(photo(11, 10)))


def test_pillows_bomb_limit_is_on_and_followed(codec, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(sdlite.SdliteError, match="decompression-bomb limit of 50"):
        codec.encode(saved(photo(10, 6), "PNG"))
