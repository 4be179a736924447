"""Untrusted image input: formats, limits checked before decoding, conversion to RGB(A)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from gen_core.images import ImageInputError, load_image, load_image_rgba, open_image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (8-bit RGB) but carries only a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel data gets decoded."""

    def refuse(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_load_as_rgb(fmt):
    source = Image.new("RGB", (40, 30), (200, 100, 50))
    image = load_image(encode(source, fmt))
    assert image.mode == "RGB" and image.size == (40, 30)
    r, g, b = image.getpixel((5, 5))
    assert abs(r - 200) < 12 and abs(g - 100) < 12 and abs(b - 50) < 12


def test_alpha_is_composited_onto_white_or_kept():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    data = encode(rgba, "PNG")
    rgb = load_image(data)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0))[0] in (127, 128)
    assert rgb.getpixel((2, 2)) == (255, 0, 0)
    kept = load_image_rgba(data)
    assert kept.mode == "RGBA" and kept.getpixel((0, 0))[3] == 0
    assert load_image_rgba(encode(Image.new("RGB", (2, 2)), "PNG")).getpixel((0, 0))[3] == 255


def test_palette_transparency_and_16_bit_greyscale():
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    data = encode(pal, "PNG", transparency=0)
    image = load_image(data)
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 1)) == (10, 200, 30)

    grey16 = Image.fromarray(np.full((3, 3), 65535 // 2, dtype=np.uint16))
    image = load_image(encode(grey16, "PNG"))
    assert image.mode == "RGB" and abs(image.getpixel((0, 0))[0] - 128) <= 1


def test_gif_first_frame_and_exif_orientation():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert load_image(data).getpixel((0, 0))[0] > 200

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif)
    assert load_image(data).size == (20, 40)


def test_not_an_image():
    for data in (b"", b"hello, this is text", b"%PDF-1.7\n" + b"\x00" * 100):
        with pytest.raises(ImageInputError, match=r"^That file is not an image \(PNG, JPEG or WebP\)$"):
            load_image(data)


def test_other_image_formats_are_refused():
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(encode(Image.new("RGB", (4, 4)), "BMP"))
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(encode(Image.new("RGB", (4, 4)), "TIFF"))


def test_too_many_bytes_refused_first():
    with pytest.raises(ImageInputError, match=r"Image file is 2 MB; the limit is 1 MB"):
        load_image(b"\x89PNG" + b"\x00" * (2 * 1024 * 1024 - 4), max_bytes=1024 * 1024)


def test_pixel_limit_checked_before_decoding(no_decoding):
    with pytest.raises(ImageInputError, match=r"^Image is 9000×9000 = 81 MP; the limit is 16\.8 MP$"):
        load_image(png_header_only(9000, 9000))
    with pytest.raises(ImageInputError, match=r"^Image is 100×100 = 0\.01 MP; the limit is 0\.005 MP$"):
        load_image(png_header_only(100, 100), max_pixels=5000)


def test_decompression_bomb_header_refused(no_decoding):
    # 20000x20000 = 400 MP: PIL itself raises DecompressionBombError while reading the header.
    data = png_header_only(20000, 20000)
    assert len(data) < 200
    with pytest.raises(ImageInputError, match=r"^Image is 400 MP; the limit is 16\.8 MP$"):
        load_image(data)
    with pytest.raises(ImageInputError, match="MP"):
        open_image(data)


def test_open_image_is_lazy_and_damaged_files_are_reported():
    image = open_image(png_header_only(64, 64))
    assert image.size == (64, 64) and image.format == "PNG"
    with pytest.raises(ImageInputError, match="damaged or incomplete"):
        load_image(png_header_only(64, 64))  # header fine, pixel data missing
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(ImageInputError, match="damaged or incomplete"):
        load_image(good[: len(good) * 2 // 3])


def test_equal_looking_limits_get_more_digits():
    with pytest.raises(ImageInputError, match=r"^Image is 4100×4100 = 16\.81 MP; the limit is 16\.777 MP$"):
        load_image(png_header_only(4100, 4100))


def test_multi_picture_jpegs_give_their_first_picture():
    """Phones write MPO files (a JPEG with more pictures appended): the first picture is used."""
    first, second = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 10, 200))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    image = load_image(buf.getvalue())
    assert image.size == (40, 30) and image.getpixel((20, 15))[0] > 150
