"""img2img cost: an img2img at strength s against a txt2img of the same size and steps.

It denoises ``int(steps * s)`` steps (what the bot charges for), plus one VAE encode of the input; the
ratio to a txt2img should be about ``s``.  Interleaved runs on one engine, medians.

    python -m bench.img2img [--size 256] [--steps 20] [--runs 5] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import interleaved, medians, tiny_engine

STRENGTHS = (0.25, 0.5, 0.75, 1.0)


def run(size: int = 256, steps: int = 20, runs: int = 5, warmup: int = 1, model_dir=None, threads: int | None = None) -> dict[str, Any]:
    from gen_core.types import GenerationRequest

    engine = tiny_engine(model_dir, threads)
    picture = engine.generate(GenerationRequest(prompt="a cat", width=size, height=size, steps=steps, seed=1)).images[0].image

    def request(strength: float | None) -> GenerationRequest:
        img2img = {} if strength is None else {"init_image": picture, "strength": strength}
        return GenerationRequest(prompt="a dog", width=size, height=size, steps=steps, seed=2, **img2img)

    variants = {"txt2img": lambda: engine.generate(request(None))}
    variants |= {f"img2img {s:g}": (lambda s=s: engine.generate(request(s))) for s in STRENGTHS}
    med = medians(interleaved(variants, runs, warmup))
    return {
        "bench": "img2img",
        "size": f"{size}x{size}",
        "steps": steps,
        "runs": runs,
        "median_s": {name: round(v, 4) for name, v in med.items()},
        "ratio_to_txt2img": {f"{s:g}": round(med[f"img2img {s:g}"] / med["txt2img"], 3) for s in STRENGTHS},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.size, args.steps, args.runs, model_dir=args.model_dir), indent=2))


if __name__ == "__main__":
    main()
