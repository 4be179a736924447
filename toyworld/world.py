"""The toy world: procedurally drawn pictures of one shape on a plain background, with captions.

A scene is a frozen :class:`Scene` (colour, shape, size, position, style, background); ``draw``
renders it at any size (supersampled, so edges are soft like a real photo's), and ``caption``
describes it in one of several plain-English forms, mentioning a random subset of its attributes.
Some colour-shape-background combinations are held out of training (:func:`is_held_out`) so a
benchmark can ask for pictures the model has never seen.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 175, 50),
    "blue": (35, 70, 225),
    "yellow": (240, 215, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 135, 25),
    "purple": (140, 45, 195),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
STYLES = ("plain", "striped", "outlined")
# Centres as fractions of the picture's width/height.
POSITIONS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
}
# Object side as a fraction of the picture's shorter side.
SIZE_FRACTION = {"small": 0.24, "large": 0.44}
STRIPE_PERIOD = 1 / 8  # of the picture's height
_PHRASES = {
    "centre": ("in the centre", "in the middle"),
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "top left": ("at the top left",),
    "top right": ("at the top right",),
    "bottom left": ("at the bottom left",),
    "bottom right": ("at the bottom right",),
}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: str = "large"
    position: str = "centre"
    style: str = "plain"


def is_held_out(colour: str, shape: str, background: str) -> bool:
    """About one in eight colour-shape-background combinations never appears in training."""
    digest = hashlib.sha256(f"{colour}/{shape}/{background}".encode()).digest()
    return digest[0] % 8 == 0


def held_out_combinations() -> list[tuple[str, str, str]]:
    return [
        (c, s, b)
        for c in COLOURS
        for s in SHAPES
        for b in COLOURS
        if c != b and is_held_out(c, s, b)
    ]


def stripe_colour(colour: str) -> str:
    return "black" if colour in ("white", "yellow") else "white"


def random_scene(rng: random.Random, held_out: bool = False, style: str | None = None) -> Scene:
    """A random scene; ``held_out`` draws only from the held-out combinations (else never from them)."""
    while True:
        colour, background = rng.sample(COLOURS, 2)
        shape = rng.choice(SHAPES)
        if is_held_out(colour, shape, background) == held_out:
            break
    return Scene(
        colour=colour,
        shape=shape,
        background=background,
        size=rng.choice(SIZES),
        position=rng.choice(tuple(POSITIONS)),
        style=style or rng.choices(STYLES, weights=(4, 1, 1))[0],
    )


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """The outline of a square or triangle (None for a circle) centred on (cx, cy)."""
    h = side / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill) -> None:
    polygon = shape_polygon(shape, cx, cy, side)
    if polygon is None:
        draw.ellipse([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def draw(scene: Scene, width: int = 64, height: int = 64, jitter: random.Random | None = None) -> Image.Image:
    """Render ``scene`` as an RGB picture; ``jitter`` moves and scales the object a little."""
    ss = 4
    w, h = width * ss, height * ss
    fx, fy = POSITIONS[scene.position]
    frac = SIZE_FRACTION[scene.size]
    if jitter is not None:
        fx += jitter.uniform(-0.04, 0.04)
        fy += jitter.uniform(-0.04, 0.04)
        frac *= jitter.uniform(0.9, 1.1)
    cx, cy, side = fx * w, fy * h, frac * min(w, h)
    canvas = Image.new("RGB", (w, h), PALETTE[scene.background])
    mask = Image.new("L", (w, h), 0)
    _draw_shape(ImageDraw.Draw(mask), scene.shape, cx, cy, side, 255)
    if scene.style == "outlined":
        inner = side * 0.62 if scene.shape != "triangle" else side * 0.6
        dy = side * 0.07 if scene.shape == "triangle" else 0.0  # a triangle's incentre sits low
        _draw_shape(ImageDraw.Draw(mask), scene.shape, cx, cy + dy, inner, 0)
    body = Image.new("RGB", (w, h), PALETTE[scene.colour])
    if scene.style == "striped":
        period = max(2, round(STRIPE_PERIOD * h))
        stripes = ImageDraw.Draw(body)
        for y in range(0, h, period):
            stripes.rectangle([0, y + period * 5 // 8, w, y + period - 1], fill=PALETTE[stripe_colour(scene.colour)])
    canvas.paste(body, (0, 0), mask)
    return canvas.resize((width, height), Image.Resampling.BOX)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene, rng: random.Random) -> str:
    """One plain-English description of ``scene``; size, position and style are sometimes left out."""
    words = []
    if rng.random() < 0.6:
        words.append(scene.size)
    if scene.style != "plain" and rng.random() < 0.9:
        words.append(scene.style)
    words += [scene.colour, scene.shape]
    where = rng.choice(_PHRASES[scene.position]) if rng.random() < 0.6 else ""
    form = rng.random()
    if form < 0.15:  # tag style, as NovelAI users write
        tags = [" ".join(words), f"{scene.background} background"]
        if where:
            tags.insert(1, where)
        return ", ".join(tags)
    noun = " ".join(words)
    text = f"{_article(noun)} {noun}"
    if where:
        text += f" {where}"
    return text + f" on {_article(scene.background)} {scene.background} background"


def canonical_caption(scene: Scene) -> str:
    """The full caption of a scene in the main form, e.g. "a small red circle on the left on a blue background"."""
    words = [scene.size] + ([scene.style] if scene.style != "plain" else []) + [scene.colour, scene.shape]
    noun = " ".join(words)
    where = _PHRASES[scene.position][0]
    return f"{_article(noun)} {noun} {where} on {_article(scene.background)} {scene.background} background"


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
