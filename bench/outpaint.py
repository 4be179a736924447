"""Outpaint cost: an outpaint (canvas + feathered mask, masked latent blending every step, pixel
composite) vs a plain txt2img of the same canvas size, same steps and seed count, on the tiny
offline model.  Runs are interleaved and medians reported: the ratio is what the extra work of
outpainting costs over generating the same pixels from scratch.

    python -m bench.outpaint [--size 256] [--steps 20] [--count 4] [--runs 5] [--model-dir DIR]

``run(...)`` returns a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import interleaved, medians, tiny_engine


def run(
    size: int = 256, steps: int = 20, count: int = 4, runs: int = 5, warmup: int = 1, model_dir: str | Path | None = None
) -> dict[str, Any]:
    from gen_core.outpaint import InpaintRequest, inpaint_batch, outpaint_inputs, plan_outpaint
    from gen_core.types import GenerationRequest

    engine = tiny_engine(model_dir, prefix="bench-outpaint-")

    src = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8))
    plan = plan_outpaint(src.size, "right", size // 2, 4 * size * size, engine.geometry)
    width, height = plan.canvas
    base = GenerationRequest("a beach at sunset", width=width, height=height, steps=steps, seed=1, count=count)

    def txt2img() -> None:
        engine.generate(base)

    def outpaint() -> None:
        canvas, mask = outpaint_inputs(src, plan, 16, seed=1)
        req = GenerationRequest(**{**base.__dict__, "init_image": canvas, "strength": 1.0})
        inpaint_batch(engine, [InpaintRequest(req, mask)])

    med = medians(interleaved({"txt2img": txt2img, "outpaint": outpaint}, runs, warmup))
    return {
        "canvas": f"{width}x{height}",
        "steps": steps,
        "count": count,
        "txt2img_s": round(med["txt2img"], 4),
        "outpaint_s": round(med["outpaint"], 4),
        "outpaint_over_txt2img": round(med["outpaint"] / med["txt2img"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model-dir")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.size, args.steps, args.count, args.runs, model_dir=args.model_dir), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
