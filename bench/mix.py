"""Prompt mixing cost, measured side by side on one engine (interleaved runs, medians).

* ``loop_over_pipeline``: ``generate_mix`` (our own denoising loop) with a one-prompt recipe vs
  ``engine.generate`` (the stock diffusers pipeline) for the same image — the loop's overhead;
  ``identical_pixels`` says whether both gave the same image.
* ``composable_over_blend``: a two-prompt recipe, composable (3 UNet evaluations per step) vs
  blend (2); expect about 1.5 when the UNet dominates.
* ``sweep_over_five_renders``: the 5-weight sweep (one UNet batch of 5) vs five separate blend
  renders — the batching gain of the sweep grid.

    python -m bench.mix [--size 256] [--steps 10] [--runs 5] [--threads N] [--model-dir DIR]

On a busy machine pass ``--threads 1``: the tiny model's steps take milliseconds, and contended
intra-op threads otherwise dominate the timings.

``run(...)`` returns a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import interleaved, medians, tiny_engine

PROMPTS = ("a red cat sitting on a chair, (soft light:1.2)", "a blue dog in the snow, detailed fur")
NEGATIVE = "lowres, blurry"


def run(
    size: int = 256,
    steps: int = 10,
    runs: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    import torch

    from gen_core.mix import BLEND, COMPOSABLE, SWEEP_WEIGHTS, MixPart, MixRequest, generate_mix
    from gen_core.types import GenerationRequest

    engine = tiny_engine(model_dir, threads, prefix="bench-mix-")

    def base(prompt: str = "") -> GenerationRequest:
        return GenerationRequest(prompt, negative=NEGATIVE, width=size, height=size, steps=steps, seed=1234)

    one = [MixPart(PROMPTS[0], 1.0)]
    two = [MixPart(p, 1.0) for p in PROMPTS]

    def mixed(parts, mode=BLEND, sweep=()):
        return generate_mix(engine, [MixRequest(base(), parts, mode=mode, sweep=sweep)])[0].images[0].image

    def five_renders():
        return [mixed([MixPart(PROMPTS[0], 1 - t), MixPart(PROMPTS[1], t)]) for t in SWEEP_WEIGHTS]

    variants = {
        "pipeline": lambda: engine.generate(base(PROMPTS[0])).images[0].image,
        "loop": lambda: mixed(one),
        "blend2": lambda: mixed(two),
        "composable2": lambda: mixed(two, COMPOSABLE),
        "sweep": lambda: mixed(two, sweep=SWEEP_WEIGHTS),
        "five_renders": five_renders,
    }
    diff = np.abs(
        np.asarray(variants["pipeline"](), dtype=np.int16) - np.asarray(variants["loop"](), dtype=np.int16)
    ).max()
    med = medians(interleaved(variants, runs, warmup))
    return {
        "bench": "mix",
        "model": "tiny (diffusers layout, random weights)",
        "device": str(engine.device),
        "torch_threads": torch.get_num_threads(),
        "size": f"{size}x{size}",
        "steps": steps,
        "runs": runs,
        "identical_pixels": bool(diff == 0),
        "max_pixel_diff": int(diff),
        "median_s": {name: round(v, 4) for name, v in med.items()},
        "loop_over_pipeline": round(med["loop"] / med["pipeline"], 3),
        "composable_over_blend": round(med["composable2"] / med["blend2"], 3),
        "sweep_over_five_renders": round(med["sweep"] / med["five_renders"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--model-dir", default=None, help="existing/created tiny model directory")
    args = parser.parse_args(argv)
    result = run(size=args.size, steps=args.steps, runs=args.runs, threads=args.threads, model_dir=args.model_dir)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
