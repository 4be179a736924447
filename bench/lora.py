"""LoRAs on vs off: the cost of one and of three LoRAs in a render, and of switching LoRA sets between jobs.

The same request (prompt, size, steps, seed) runs with no LoRA, one and three (random rank-``rank``
adapters on every attention projection of the UNet, written as diffusers-layout ``.safetensors`` files
and applied as the worker applies them: ``GenerationRequest.loras`` → ``gen_core.lora.LoraAdapters``),
interleaved, medians reported.  Switching is what a job with another set pays once its files are
loaded (activate the set with weights, then disable every adapter), timed alone against one render;
the first use of a file (reading it and adding the adapter) is reported too.  On the tiny model the
UNet is so small that the ratios are upper bounds.

    python -m bench.lora [--size 256] [--steps 10] [--runs 5] [--rank 8] [--model-dir DIR]

``run(...)`` returns a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import add_on_figures, tiny_engine, tiny_engine_fields

TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")


def random_lora(unet: torch.nn.Module, rank: int, seed: int, scale: float = 1.0) -> bytes:
    """A LoRA file (diffusers layout: ``unet.<module>.lora_A/B.weight``) of random rank-``rank`` adapters on
    every attention projection of ``unet``, made from the module shapes alone (no copy of the UNet)."""
    from safetensors.torch import save

    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn" in name and name.endswith(TARGETS):
            down = torch.randn(rank, module.in_features, generator=g) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=g) * scale / rank**0.5
            state[f"unet.{name}.lora_A.weight"] = down.half()
            state[f"unet.{name}.lora_B.weight"] = up.half()
    return save(state)


def switch_seconds(engine: Any, sets: list[tuple[Any, ...]], repeats: int) -> list[float]:
    """Seconds of activating and then disabling each of ``sets`` in turn (files already loaded)."""
    out = []
    for i in range(repeats):
        started = time.perf_counter()
        with engine.loras.active(sets[i % len(sets)]):
            pass
        out.append(time.perf_counter() - started)
    return out


def run(
    size: int = 256,
    steps: int = 10,
    runs: int = 5,
    warmup: int = 1,
    rank: int = 8,
    seed: int = 7,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    from gen_core.lora import LoraUse
    from gen_core.types import GenerationRequest

    engine = tiny_engine(model_dir, prefix="bench-lora-")
    with tempfile.TemporaryDirectory(prefix="bench-lora-files-") as tmp:
        files = []
        for i in range(3):
            path = Path(tmp) / f"lora{i}.safetensors"
            path.write_bytes(random_lora(engine.unet, rank, seed=i))
            files.append(str(path))
        one = (LoraUse(files[0], 0.8, 0.8),)
        three = tuple(LoraUse(f, 0.6, 0.6) for f in files)

        def render(loras):
            request = GenerationRequest("a cat, masterpiece", width=size, height=size, steps=steps, seed=seed, loras=loras)
            return lambda: engine.generate(request).images[0].image

        variants = {"off": render(()), "one": render(one), "three": render(three)}
        started = time.perf_counter()
        with engine.loras.active(one):  # the first use of a file: read it, add the adapter
            pass
        first_load_s = time.perf_counter() - started
        sets = [one, three, (LoraUse(files[1], 1.0, 0.5),)]

        def switch(i: int) -> None:
            with engine.loras.active(sets[i % len(sets)]):
                pass

        figures = add_on_figures(variants, switch, 60, runs, warmup)
    return {
        "bench": "lora",
        **tiny_engine_fields(engine),
        "size": f"{size}x{size}",
        "steps": steps,
        "runs": runs,
        "rank": rank,
        "first_load_ms": round(first_load_s * 1000, 1),
        **figures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--model-dir", default=None, help="existing/created tiny model directory")
    args = parser.parse_args(argv)
    r = run(size=args.size, steps=args.steps, runs=args.runs, rank=args.rank, model_dir=args.model_dir)
    print(json.dumps(r, indent=2))
    print(
        f"LoRA on / off: one {r['ratio_one_over_off']:.3f}×, three {r['ratio_three_over_off']:.3f}× "
        f"({r['size']}, {r['steps']} steps, rank {r['rank']}, medians of {r['runs']} interleaved runs); switching sets "
        f"{r['switch_ms_median']:.2f} ms ({r['switch_over_render'] * 100:.2f} % of a render), first use of a file "
        f"{r['first_load_ms']:.0f} ms; plain output identical afterwards: {r['off_identical_after']}"
    )


if __name__ == "__main__":
    main()
