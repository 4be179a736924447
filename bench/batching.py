"""Batching: 4 compatible txt2img requests as one ``engine.generate_batch`` call vs one by one.

The four requests share size, steps, sampler, CFG and clip skip (so the engine runs them as one
UNet batch of 4 images, 8 rows with CFG) and differ in prompt and seed, as four users' /imagine
jobs claimed together by the worker do.  The sequential variant calls ``engine.generate`` four
times.  Runs are interleaved (the order alternates each round), medians reported; the headline is
the throughput ratio sequential / batched (target >= 1.6x).

On a GPU a batch of 4 costs little more than one image, so the ratio approaches 4x.  On a CPU the
convolutions are already compute-bound at batch 1, so batching only saves the per-call and
per-op overhead (Python, scheduler, dispatch) and the ratio stays well below that; the VAE decode
runs image by image either way (``vae_slicing``).  The result dict carries a per-stage split
(UNet forward at batch 2 vs 8, VAE decode) to show where the time goes.

    python -m bench.batching [--size 512] [--steps 20] [--runs 5] [--threads N] [--model-dir DIR]

``run(...)`` returns a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import interleaved, medians, tiny_engine, tiny_engine_fields

PROMPTS = [
    "masterpiece, best quality, a cat sitting on a wooden chair, soft light",
    "masterpiece, best quality, a lighthouse on a cliff at sunset, dramatic sky",
    "masterpiece, best quality, 1girl, long hair, cherry blossoms, school uniform",
    "masterpiece, best quality, a bowl of ramen, steam, close-up, food photography",
]
NEGATIVE = "lowres, bad anatomy, bad hands, text, error, worst quality, low quality, jpeg artifacts"
TARGET_RATIO = 1.6


def _median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _stage_split(engine, size: int, runs: int) -> dict[str, float]:
    """Median ms of one UNet forward at batch 2 (1 image + CFG) and 8 (4 images), and one VAE decode."""
    unet, vae = engine.txt2img.unet, engine.txt2img.vae
    lat = size // 8
    dtype, device = engine.dtype, engine.device
    ctx_dim = unet.config.cross_attention_dim
    out: dict[str, float] = {}
    with torch.inference_mode():
        for rows in (2, 8):
            x = torch.randn(rows, 4, lat, lat, dtype=dtype, device=device)
            ctx = torch.randn(rows, 77, ctx_dim, dtype=dtype, device=device)
            t = torch.tensor(500, device=device)
            out[f"unet_forward_ms_rows{rows}"] = round(
                _median_ms(lambda x=x, ctx=ctx, t=t: unet(x, t, encoder_hidden_states=ctx), runs), 2
            )
        z = torch.randn(1, 4, lat, lat, dtype=dtype, device=device)
        out["vae_decode_ms_1"] = round(_median_ms(lambda: vae.decode(z), runs), 2)
    out["unet_rows8_over_rows2"] = round(out["unet_forward_ms_rows8"] / out["unet_forward_ms_rows2"], 2)
    return out


def run(
    size: int = 512,
    steps: int = 20,
    runs: int = 5,
    warmup: int = 1,
    n_requests: int = 4,
    sampler: str = "Euler a",
    seed: int = 1000,
    threads: int | None = None,
    model_dir: str | Path | None = None,
    stage_split: bool = True,
) -> dict[str, Any]:
    from gen_core.types import GenerationRequest

    engine = tiny_engine(model_dir, threads, prefix="bench-batching-")

    requests = [
        GenerationRequest(
            PROMPTS[i % len(PROMPTS)], negative=NEGATIVE, width=size, height=size, steps=steps,
            cfg=7.0, sampler=sampler, seed=seed + 17 * i,
        )
        for i in range(n_requests)
    ]
    groups = engine.plan(requests, engine.encode_all(requests))  # how the engine will batch them

    def sequential():
        return [engine.generate(r).images[0].image for r in requests]

    def batched():
        return [res.images[0].image for res in engine.generate_batch(requests)]

    a, b = sequential(), batched()
    diffs = [np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)) for x, y in zip(a, b, strict=True)]
    identical = all(not d.any() for d in diffs)
    max_diff = max(int(d.max()) for d in diffs)
    # the identity check above was the first warm-up round
    times = interleaved({"sequential": sequential, "batched": batched}, runs, warmup=warmup - 1)
    med = medians(times)
    result: dict[str, Any] = {
        "bench": "batching",
        **tiny_engine_fields(engine),
        "size": f"{size}x{size}",
        "steps": steps,
        "sampler": sampler,
        "requests": n_requests,
        "unet_batches": len(groups),
        "runs": runs,
        "identical_pixels": bool(identical),
        "max_pixel_diff": max_diff,
        "median_s_sequential": round(med["sequential"], 4),
        "median_s_batched": round(med["batched"], 4),
        "images_per_s_sequential": round(n_requests / med["sequential"], 3),
        "images_per_s_batched": round(n_requests / med["batched"], 3),
        "throughput_ratio": round(med["sequential"] / med["batched"], 3),
        "target_ratio": TARGET_RATIO,
        "all_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
    }
    if stage_split:
        result["stages"] = _stage_split(engine, size, max(3, runs))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--model-dir", default=None, help="existing/created tiny model directory")
    args = parser.parse_args(argv)
    r = run(size=args.size, steps=args.steps, runs=args.runs, sampler=args.sampler,
            threads=args.threads, model_dir=args.model_dir)
    print(json.dumps(r, indent=2))
    verdict = "meets" if r["throughput_ratio"] >= TARGET_RATIO else "misses"
    print(
        f"{r['requests']} requests {r['size']} {r['steps']} steps: batched {r['median_s_batched']:.3f} s "
        f"({r['images_per_s_batched']:.2f} img/s) vs one by one {r['median_s_sequential']:.3f} s "
        f"({r['images_per_s_sequential']:.2f} img/s): throughput ratio {r['throughput_ratio']:.2f}x, "
        f"{verdict} the {TARGET_RATIO}x target (medians of {r['runs']} interleaved runs, "
        f"{r['torch_threads']} torch threads on {r['device']}, identical pixels: {r['identical_pixels']})"
    )


if __name__ == "__main__":
    main()
