"""``python -m toyworld grid OUT.png [--model DIR]``: a labelled grid of what a model draws for a few
prompts (one row per prompt, one column per seed) -- the picture in the README."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

PROMPTS = (
    "a yellow triangle on a black background",
    "a red circle on a blue background",
    "a small green square at the top left on a white background",
    "a large striped purple circle on an orange background",
    "an outlined white triangle on a red background",
    "a small blue circle at the bottom right on a yellow background",
)
SEEDS = (1, 2, 3, 4)


def render_grid(model: Path, out: Path, scale: int = 2) -> None:
    from gen_core.engine import Engine
    from gen_core.types import EngineConfig, GenerationRequest

    engine = Engine.load(EngineConfig(model_path=str(model), device="cpu", dtype="fp32"))
    side = engine.geometry.native
    reqs = [GenerationRequest(prompt=p, width=side, height=side, steps=28, seed=SEEDS[0], count=len(SEEDS))
            for p in PROMPTS]
    rows = [[im.image for im in r.images] for r in engine.generate_batch(reqs)]
    cell, label_width = side * scale, 430
    grid = Image.new("RGB", (label_width + cell * len(SEEDS), cell * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(grid)
    for y, (prompt, images) in enumerate(zip(PROMPTS, rows, strict=True)):
        draw.text((8, y * cell + cell // 2 - 6), prompt, fill="black")
        for x, image in enumerate(images):
            grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (label_width + x * cell, y * cell))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)


def main(argv: list[str] | None = None) -> None:
    from toyworld import MODEL_DIR

    parser = argparse.ArgumentParser(prog="python -m toyworld grid", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    args = parser.parse_args(argv)
    render_grid(args.model, args.out)
