"""Engine overhead: ``engine.generate`` vs a bare diffusers pipeline call.

Both produce the same image (same prompt embeddings, size, steps, sampler and seed) on the tiny
offline model; the bare call gets the embeddings precomputed, so the engine's prompt encoding,
validation, scheduler set-up, generator set-up and result wrapping are all counted as overhead.
A third variant adds a progress callback with previews every 5 steps.  Runs are interleaved
(the order alternates each round) and medians reported; the target is a ratio <= 1.05.

``--family sdxl`` runs the same comparison on the tiny SDXL model (both text encoders, pooled
embeddings and size conditioning passed to the bare SDXL pipeline call too).

    python -m bench.engine_overhead [--size 512] [--steps 20] [--runs 7] [--model-dir DIR] [--family sdxl]

``run(...)`` returns a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import interleaved, medians, tiny_engine, tiny_engine_fields

PROMPT = "masterpiece, best quality, a cat sitting on a wooden chair, (soft light:1.2), detailed fur"
NEGATIVE = "lowres, blurry, bad anatomy, watermark"


def run(
    size: int = 512,
    steps: int = 20,
    runs: int = 7,
    warmup: int = 2,
    sampler: str = "Euler a",
    seed: int = 1234,
    model_dir: str | Path | None = None,
    family: str = "sd1",
) -> dict[str, Any]:
    from gen_core.samplers import make_scheduler
    from gen_core.types import GenerationRequest

    engine = tiny_engine(model_dir, prefix="bench-engine-", family=family)

    request = GenerationRequest(
        PROMPT, negative=NEGATIVE, width=size, height=size, steps=steps, cfg=7.0, sampler=sampler, seed=seed
    )
    pipe = engine.txt2img
    with torch.inference_mode():
        cond, uncond = engine.encoder.encode_pair(PROMPT, NEGATIVE, clip_skip=request.clip_skip)
        added = engine.added_call_kwargs(engine.pooled_all([request]), [1], size, size)
    bare_scheduler = make_scheduler(sampler, pipe.scheduler.config)

    def bare():
        pipe.scheduler = bare_scheduler  # the engine installs its own on every call
        return pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=7.0,
            generator=torch.Generator("cpu").manual_seed(seed),
            **added,
        ).images[0]

    def ours():
        return engine.generate(request).images[0].image

    def ours_progress():
        return engine.generate(request, progress=lambda p: None, preview_every=5).images[0].image

    variants = {"bare": bare, "engine": ours, "engine_progress": ours_progress}
    identical = np.array_equal(np.asarray(bare()), np.asarray(ours()))
    times = interleaved(variants, runs, warmup)
    med = medians(times)
    return {
        "bench": "engine_overhead",
        **tiny_engine_fields(engine),
        "family": engine.family,
        "size": f"{size}x{size}",
        "steps": steps,
        "sampler": sampler,
        "runs": runs,
        "identical_pixels": bool(identical),
        "median_s_bare": round(med["bare"], 4),
        "median_s_engine": round(med["engine"], 4),
        "median_s_engine_progress": round(med["engine_progress"], 4),
        "ratio_engine_over_bare": round(med["engine"] / med["bare"], 3),
        "ratio_engine_progress_over_bare": round(med["engine_progress"] / med["bare"], 3),
        "all_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--model-dir", default=None, help="existing/created tiny model directory")
    parser.add_argument("--family", choices=("sd1", "sdxl"), default="sd1", help="tiny model layout")
    args = parser.parse_args(argv)
    result = run(
        size=args.size,
        steps=args.steps,
        runs=args.runs,
        sampler=args.sampler,
        model_dir=args.model_dir,
        family=args.family,
    )
    print(json.dumps(result, indent=2))
    print(
        f"engine.generate {result['median_s_engine'] * 1000:.1f} ms vs bare diffusers "
        f"{result['median_s_bare'] * 1000:.1f} ms: ratio {result['ratio_engine_over_bare']:.3f} "
        f"(with progress+previews {result['ratio_engine_progress_over_bare']:.3f}; target <= 1.05; "
        f"medians of {result['runs']} interleaved runs, identical pixels: {result['identical_pixels']})"
    )


if __name__ == "__main__":
    main()
