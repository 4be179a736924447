"""Untrusted image input (Discord attachments): size limits before decoding, then RGB(A).

``Image.open`` only reads the header, so the byte size, the format and the pixel count are all
checked before any pixel data is decompressed; PIL's own decompression-bomb error (images above
twice ``Image.MAX_IMAGE_PIXELS``, raised while reading the header) is turned into the same message.
"""

from __future__ import annotations

import io
import re
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

OPEN_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
ALLOWED_FORMATS = (*OPEN_FORMATS, "MPO")  # MPO: phone JPEGs with several pictures (the JPEG plugin opens them)
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
WHITE = (255, 255, 255)

NOT_AN_IMAGE = "That file is not an image (PNG, JPEG or WebP)"
DAMAGED = "That image file is damaged or incomplete"


class ImageInputError(ValueError):
    """An input image was refused; the message is meant for the user."""


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}".rstrip("0").rstrip(".")


def _mp(pixels: int, digits: int = 1) -> str:
    return f"{pixels / 1e6:.{digits}f}".rstrip("0").rstrip(".")


def _too_many_pixels(pixels: int, max_pixels: int, dims: str = "") -> ImageInputError:
    have, limit = _mp(pixels), _mp(max_pixels)
    if have == limit:  # e.g. 16.8 vs 16.8: show enough digits to tell them apart
        have, limit = _mp(pixels, 3), _mp(max_pixels, 3)
    return ImageInputError(f"Image is {dims}{have} MP; the limit is {limit} MP")


def open_image(
    data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open untrusted bytes lazily and check them; the pixels are NOT decoded yet.

    Raises :class:`ImageInputError` for too many bytes, a format other than PNG/JPEG/WebP/GIF,
    or more than ``max_pixels`` pixels.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise ImageInputError(NOT_AN_IMAGE)
    if size > max_bytes:
        raise ImageInputError(f"Image file is {_mb(size)} MB; the limit is {_mb(max_bytes)} MB")
    try:
        image = Image.open(io.BytesIO(bytes(data)), formats=OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(int(found.group(1)) if found else max_pixels + 1, max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        raise ImageInputError(NOT_AN_IMAGE) from None
    if image.format not in ALLOWED_FORMATS:  # defensive: `formats` already restricts the plugins
        raise ImageInputError(NOT_AN_IMAGE)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageInputError(DAMAGED)
    if width * height > max_pixels:
        raise _too_many_pixels(width * height, max_pixels, f"{width}×{height} = ")
    return image


def _decode(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        image.seek(0)  # animated GIF/PNG/WebP: the first frame
        image.load()
    except Image.DecompressionBombError:
        raise _too_many_pixels(image.size[0] * image.size[1], max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError):
        raise ImageInputError(DAMAGED) from None
    try:
        image = ImageOps.exif_transpose(image)  # phone photos: honour the orientation tag
    except Exception:  # a broken EXIF block must not make an otherwise good image unusable
        pass
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale -> 8-bit ``L`` (``convert`` would clip, not scale)."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.size and arr.max() > 255:
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def to_rgba(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGBA (opaque where the image has no alpha)."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode == "RGBA":
        return image.copy()
    return image.convert("RGBA")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL mode -> RGB; transparent parts are composited onto ``background`` (white)."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def load_image(
    data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode an untrusted PNG/JPEG/WebP/GIF (first frame) to RGB, alpha composited onto white."""
    return to_rgb(_decode(data, max_bytes, max_pixels))


def load_image_rgba(
    data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Like :func:`load_image` but keeps transparency (RGBA), e.g. for masks."""
    return to_rgba(_decode(data, max_bytes, max_pixels))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
