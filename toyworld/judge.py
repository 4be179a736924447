"""A deterministic judge of toy-world pictures: what does an image show?

Pixel statistics only: the background is the palette colour nearest the border's median, the object
is every pixel far from it, its colour the most common palette colour among them, its shape the
ideal circle/square/triangle that overlaps its (hole-filled) mask best, its position its centroid,
its size its extent, and its style whether the mask has a hole (outlined) or the object is crossed
by bands of the stripe colour (striped).  It works on any picture size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from toyworld.world import COLOURS, PALETTE, SIZE_FRACTION, shape_polygon

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
# A pixel belongs to the object when it is this far (RGB distance) from the background colour.
_OBJECT_DISTANCE = 80.0
_MIN_OBJECT_FRACTION = 0.01


@dataclass(frozen=True)
class Verdict:
    background: str
    colour: str | None  # None: no object found
    shape: str | None
    size: str | None
    position: str | None
    style: str | None
    object_fraction: float  # share of the picture covered by the object
    stripe_score: float  # 0 = flat, 1 = perfectly banded rows


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour for each RGB row of ``rgb`` (N, 3)."""
    d = ((rgb[:, None, :].astype(np.float32) - _PALETTE[None]) ** 2).sum(-1)
    return d.argmin(1)


def colour_share(image: Image.Image | np.ndarray, colour: str) -> float:
    """Fraction of the picture's pixels whose nearest palette colour is ``colour``."""
    px = np.asarray(image, dtype=np.uint8)[..., :3].reshape(-1, 3)
    return float((nearest_colour(px) == COLOURS.index(colour)).mean())


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """``mask`` filled between its extremes along every row, then every column (convex shapes whole)."""

    def rows(m: np.ndarray) -> np.ndarray:
        idx = np.arange(m.shape[1])
        any_ = m.any(1)
        first = np.where(any_, m.argmax(1), m.shape[1])
        last = np.where(any_, m.shape[1] - 1 - m[:, ::-1].argmax(1), -1)
        return (idx[None] >= first[:, None]) & (idx[None] <= last[:, None])

    return rows(rows(mask).T).T


def _ideal_mask(shape: str, x0: float, y0: float, x1: float, y1: float, size: tuple[int, int]) -> np.ndarray:
    ss = 4
    img = Image.new("L", (size[0] * ss, size[1] * ss), 0)
    d = ImageDraw.Draw(img)
    box = [x0 * ss, y0 * ss, x1 * ss, y1 * ss]
    if shape == "circle":
        d.ellipse(box, fill=255)
    else:
        cx, cy, side = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0
        pts = shape_polygon(shape, cx, cy, side)
        # stretch the unit polygon to the bounding box
        sx, sy = (box[2] - box[0]), (box[3] - box[1])
        d.polygon([(cx + (px - cx) * sx, cy + (py - cy) * sy) for px, py in pts], fill=255)
    return np.asarray(img.resize(size, Image.Resampling.BOX)) >= 128


def _third(value: float) -> int:
    return 0 if value < 0.4 else (2 if value > 0.6 else 1)


_POSITION_NAMES = {
    (1, 1): "centre", (0, 1): "left", (2, 1): "right", (1, 0): "top", (1, 2): "bottom",
    (0, 0): "top left", (2, 0): "top right", (0, 2): "bottom left", (2, 2): "bottom right",
}


def _row_profile(is_colour: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Per row of ``body`` (rows at least 3 px wide), the share of its pixels in the object colour."""
    rows = body.sum(1)
    keep = rows >= 3
    return (is_colour & body).sum(1)[keep] / np.maximum(1, rows[keep])


def stripe_score(profile: np.ndarray) -> float:
    """How strongly a row profile alternates (0 = flat, 1 = rows switching fully at every row)."""
    if len(profile) < 4:
        return 0.0
    return float(np.abs(np.diff(profile)).mean())


def _crossings(profile: np.ndarray, low: float = 0.25, high: float = 0.75) -> int:
    """How often the profile swings from below ``low`` to above ``high`` or back."""
    count, state = 0, None
    for value in profile:
        now = True if value > high else (False if value < low else state)
        if state is not None and now != state:
            count += 1
        state = now
    return count


def judge(image: Image.Image | np.ndarray) -> Verdict:
    rgb = np.asarray(image, dtype=np.uint8)[..., :3]
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3),
                             rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    background = COLOURS[int(nearest_colour(background_rgb[None])[0])]
    distance = np.sqrt(((rgb.astype(np.float32) - _PALETTE[COLOURS.index(background)]) ** 2).sum(-1))
    mask = distance > _OBJECT_DISTANCE
    fraction = float(mask.mean())
    if fraction < _MIN_OBJECT_FRACTION:
        return Verdict(background, None, None, None, None, None, fraction, 0.0)
    counts = np.bincount(nearest_colour(rgb[mask]), minlength=len(COLOURS))
    counts[COLOURS.index(background)] = 0
    colour = COLOURS[int(counts.argmax())]
    body = _convex_fill(mask)
    ys, xs = np.nonzero(body)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    ious = {}
    for shape in ("circle", "square", "triangle"):
        ideal = _ideal_mask(shape, x0, y0, x1, y1, (w, h))
        ious[shape] = (ideal & body).sum() / max(1, (ideal | body).sum())
    shape = max(ious, key=ious.get)
    extent = max(x1 - x0, y1 - y0) / min(w, h)
    size = "large" if extent > (SIZE_FRACTION["small"] + SIZE_FRACTION["large"]) / 2 else "small"
    position = _POSITION_NAMES[(_third((x0 + x1) / 2 / w), _third((y0 + y1) / 2 / h))]
    is_colour = nearest_colour(rgb.reshape(-1, 3)).reshape(body.shape) == COLOURS.index(colour)
    profile = _row_profile(is_colour, body)
    hole = 1 - (is_colour & body).sum() / body.sum()
    if _crossings(profile) >= 3:
        style = "striped"
    elif hole > 0.22:
        style = "outlined"
    else:
        style = "plain"
    return Verdict(background, colour, shape, size, position, style, fraction, stripe_score(profile))
