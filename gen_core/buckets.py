"""NovelAI-style aspect-ratio buckets: the image sizes the bot generates at.

NovelAI trained on buckets instead of square crops: for every width from the minimum side up to
the maximum side in steps of 64, the bucket is that width with the largest height (also a
multiple of 64, within the side limits) whose area still fits the pixel budget; the same is done
with the roles of width and height swapped, and 512x512 is added.  With NovelAI's defaults (a
budget of 512x768 pixels, sides 256..1024, step 64) this gives the 19 sizes listed in
:data:`DEFAULT_BUCKETS`.

Sizes are ``(width, height)`` tuples throughout.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from PIL import Image, ImageOps, ImageStat

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_MAX_AREA",
    "bucket_choices",
    "default_buckets",
    "fit_to_bucket",
    "nearest_bucket",
    "parse_aspect",
    "scale_buckets",
    "sdxl_buckets",
]

DEFAULT_MAX_AREA = 512 * 768
_DEFAULT_MIN_SIDE = 256
_DEFAULT_MAX_SIDE = 1024
_DEFAULT_SQUARE = 512
MAX_CHOICES = 25  # Discord's limit on an option's choices

Size = tuple[int, int]


def _largest_fit(side: int, max_area: int, lo: int, hi: int, step: int) -> int | None:
    """Largest ``lo + k*step <= hi`` with ``side * it <= max_area``; None if even ``lo`` does not fit."""
    if side * lo > max_area or lo > hi:
        return None
    k = min((max_area // side - lo) // step, (hi - lo) // step)
    return lo + k * step


@lru_cache(maxsize=32)
def _generate(max_area: int, min_side: int, max_side: int, step: int, square: int | None) -> tuple[Size, ...]:
    if min(max_area, min_side, max_side, step) <= 0 or min_side > max_side:
        raise ValueError("max_area, min_side, max_side and step must be positive, min_side <= max_side")
    sizes: set[Size] = set()
    side = min_side
    while side <= max_side and side * min_side <= max_area:
        other = _largest_fit(side, max_area, min_side, max_side, step)
        if other is not None:
            sizes.add((side, other))  # width `side`, tallest height that fits
            sizes.add((other, side))  # and its transpose
        side += step
    if square and min_side <= square <= max_side and square * square <= max_area:
        sizes.add((square, square))
    if not sizes:
        raise ValueError(
            f"no {min_side}..{max_side} px bucket fits in {max_area} pixels; "
            f"use scale_buckets({max_area}) to scale the side limits with the area"
        )
    return tuple(sorted(sizes))


def default_buckets(
    max_area: int = DEFAULT_MAX_AREA,
    min_side: int = _DEFAULT_MIN_SIDE,
    max_side: int = _DEFAULT_MAX_SIDE,
    step: int = 64,
    square: int | None = _DEFAULT_SQUARE,
) -> list[Size]:
    """NovelAI's bucket sizes as ``(width, height)``, sorted.

    For each width ``w`` in ``min_side, min_side+step, ... <= max_side`` (while ``w*min_side`` fits),
    take the largest height ``h`` on the same grid with ``h <= max_side`` and ``w*h <= max_area``;
    add ``(w, h)`` and ``(h, w)``; add ``square x square`` (NovelAI's 512x512 base resolution).

    With the defaults (``max_area=512*768, min_side=256, max_side=1024, step=64``) the result is::

        256x1024  320x1024  384x896  384x960  384x1024  448x832  512x512  512x704  512x768
        576x640   640x576   704x512  768x512  832x448   896x384  960x384  1024x256 1024x320
        1024x384

    i.e. 9 portrait, 9 landscape and one square size, from 1:4 to 4:1.
    """
    return list(_generate(max_area, min_side, max_side, step, square))


DEFAULT_BUCKETS: tuple[Size, ...] = tuple(default_buckets())


def _floor_to(value: float, step: int) -> int:
    return max(step, int(value // step) * step)


def scale_buckets(max_area: int, step: int = 64) -> list[Size]:
    """Buckets for a different pixel budget, e.g. ``scale_buckets(1024 * 1024)`` for bigger GPUs.

    The side limits (256..1024) and the 512 square are scaled by ``sqrt(max_area / (512*768))`` and
    rounded down to multiples of ``step``, so the shapes stay the same and only the size grows;
    ``scale_buckets(512 * 768)`` equals :func:`default_buckets`.  For ``1024*1024`` the sides run
    384..1664 and the squares are 832 and 1024.
    """
    if max_area <= 0:
        raise ValueError("max_area must be positive")
    factor = math.sqrt(max_area / DEFAULT_MAX_AREA)
    return default_buckets(
        max_area=max_area,
        min_side=_floor_to(_DEFAULT_MIN_SIDE * factor, step),
        max_side=_floor_to(_DEFAULT_MAX_SIDE * factor, step),
        step=step,
        square=_floor_to(_DEFAULT_SQUARE * factor, step),
    )


#: SDXL's ~1 MP training resolutions as people use them (Stability's recommended list), at 1024 px.
SDXL_BUCKETS: tuple[Size, ...] = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)
SDXL_AREA = 1024 * 1024


def sdxl_buckets(max_area: int = SDXL_AREA, step: int = 64) -> list[Size]:
    """SDXL's bucket list scaled to a pixel budget (sides rounded down to ``step``), sorted.

    ``sdxl_buckets()`` is the list itself (1024², 832×1216, …, 1536×640); a model trained at 512 px
    in SDXL's layout gets the same shapes at a quarter of the area.
    """
    if max_area <= 0:
        raise ValueError("max_area must be positive")
    factor = math.sqrt(max_area / SDXL_AREA)
    return sorted({(_floor_to(w * factor, step), _floor_to(h * factor, step)) for w, h in SDXL_BUCKETS})


def _buckets(buckets) -> list[Size]:
    result = list(DEFAULT_BUCKETS if buckets is None else buckets)
    if not result:
        raise ValueError("no buckets to choose from")
    return result


def nearest_bucket(width: float, height: float, buckets=None) -> Size:
    """The bucket whose aspect ratio is closest to ``width:height`` (in log space); ties go to the larger area."""
    if not (width > 0 and height > 0):
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    target = math.log(width / height)

    def key(b: Size) -> tuple[float, int]:
        return (round(abs(math.log(b[0] / b[1]) - target), 9), -b[0] * b[1])

    return min(_buckets(buckets), key=key)


# --------------------------------------------------------------------------------------------
# User input
# --------------------------------------------------------------------------------------------

_NAMED_RATIOS = {"portrait": (2, 3), "landscape": (3, 2), "square": (1, 1)}
_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_RATIO = re.compile(rf"^{_NUM}\s*:\s*{_NUM}$")
_SIZE = re.compile(rf"^{_NUM}\s*[x×*]\s*{_NUM}$")
ACCEPTED_FORMS = (
    "a ratio like 2:3 or 16:9, a ratio or size like 3x4 or 512x768, "
    "or one of portrait, landscape, square, wide, tall"
)


def parse_aspect(text: str, buckets=None) -> Size:
    """Turn what a user typed into a bucket size.

    Accepts ``W:H`` ratios (``2:3``, ``16:9``), ``WxH`` ratios or sizes (``3x4``, ``512x768``; ``×``
    and ``*`` work too; a size that is itself a bucket is used as is, anything else goes to the
    bucket with the nearest aspect ratio), and the names ``portrait`` (2:3, 512x768), ``landscape``
    (3:2, 768x512), ``square`` (512x512), ``wide`` and ``tall`` (the most extreme buckets).
    Case and surrounding spaces are ignored.  Anything else raises ``ValueError``.
    """
    options = _buckets(buckets)
    cleaned = (text or "").strip().lower()
    if cleaned in _NAMED_RATIOS:
        return nearest_bucket(*_NAMED_RATIOS[cleaned], buckets=options)
    if cleaned in ("wide", "tall"):
        sign = 1 if cleaned == "wide" else -1
        return max(options, key=lambda b: (round(sign * math.log(b[0] / b[1]), 9), b[0] * b[1]))
    match = _RATIO.match(cleaned) or _SIZE.match(cleaned)
    if match:
        w, h = float(match.group(1)), float(match.group(2))
        if w > 0 and h > 0:
            if (w, h) in {(float(a), float(b)) for a, b in options}:
                return int(w), int(h)
            return nearest_bucket(w, h, buckets=options)
        raise ValueError(f"Aspect ratio {text.strip()!r} needs two positive numbers. Use {ACCEPTED_FORMS}.")
    raise ValueError(f"Unknown aspect ratio {text.strip()!r}. Use {ACCEPTED_FORMS}.")


def _ratio_label(w: int, h: int) -> str:
    g = math.gcd(w, h)
    return f"{w // g}:{h // g}"


def bucket_choices(buckets=None) -> list[tuple[str, str]]:
    """``(label, value)`` pairs for a Discord choice list, tallest to widest, at most 25.

    Labels look like ``"Portrait 512×768 (2:3)"``; values like ``"512x768"`` (which
    :func:`parse_aspect` accepts).  With more than 25 buckets an evenly spread subset (by aspect
    ratio, always including both extremes) is offered.
    """
    ordered = sorted(set(_buckets(buckets)), key=lambda b: (math.log(b[0] / b[1]), b[0] * b[1]))
    if len(ordered) > MAX_CHOICES:
        last = len(ordered) - 1
        picks = sorted({round(i * last / (MAX_CHOICES - 1)) for i in range(MAX_CHOICES)})
        ordered = [ordered[i] for i in picks]
    choices = []
    for w, h in ordered:
        shape = "Portrait" if h > w else "Landscape" if w > h else "Square"
        choices.append((f"{shape} {w}×{h} ({_ratio_label(w, h)})", f"{w}x{h}"))
    return choices


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


FIT_MODES = ("crop", "pad")


def fit_to_bucket(image: Image.Image, buckets=None, max_area: int | None = None, fit: str = "crop") -> Image.Image:
    """Resize an image (e.g. an upload for img2img) to a bucket without distorting it.

    Rule: apply the EXIF orientation; pick the bucket with the nearest aspect ratio (from
    ``buckets``, else ``scale_buckets(max_area)`` if given, else the default buckets). ``fit="crop"``
    scales the image (Lanczos) so that it covers the bucket in both directions and center-crops the
    overhang (scaling and cropping in one resampling step: the crop box is resized directly);
    ``fit="pad"`` scales it to lie inside the bucket and centers it on bars of its own mean colour, so
    nothing of the picture is lost. Returns a new image of exactly the bucket's size, in the input's mode.
    """
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    if buckets is None and max_area is not None:
        buckets = scale_buckets(max_area)
    image = ImageOps.exif_transpose(image) or image
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ValueError("image has no pixels")
    bw, bh = nearest_bucket(w, h, buckets)
    if fit == "pad":
        scale = min(bw / w, bh / h)
        inner = image.resize((max(1, min(bw, round(w * scale))), max(1, min(bh, round(h * scale)))), Image.Resampling.LANCZOS)
        mean = ImageStat.Stat(inner).mean
        canvas = Image.new(image.mode, (bw, bh), tuple(round(c) for c in mean) if len(mean) > 1 else round(mean[0]))
        canvas.paste(inner, ((bw - inner.width) // 2, (bh - inner.height) // 2))
        return canvas
    # The largest centered region of the source that has the bucket's aspect ratio.
    if w * bh > h * bw:  # source is wider than the bucket: trim left and right
        crop_w, crop_h = h * bw / bh, float(h)
    else:  # source is taller (or equal): trim top and bottom
        crop_w, crop_h = float(w), w * bh / bw
    left, top = (w - crop_w) / 2, (h - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize((bw, bh), Image.Resampling.LANCZOS, box=box)
