"""Hypernetworks on vs off: the cost of K/V context transforms, and of switching modules per job.

The same request (prompt, size, steps, seed) runs with no module, one module and a chain of two
(A1111's default structure ``1, 2, 1`` with ReLU, for every attention width of the model), runs
interleaved and medians reported.  Switching (attach + detach of the processors around a job,
modules already loaded) is timed alone.  The cross-attention context is transformed once per layer
call, so the overhead shrinks as the image grows; on the tiny model the UNet is so small that
the ratio is an upper bound.

    python -m bench.hypernet [--size 256] [--steps 10] [--runs 5] [--model-dir DIR]

``run(...)`` returns a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bench.common import add_on_figures, tiny_engine, tiny_engine_fields


def run(
    size: int = 256,
    steps: int = 10,
    runs: int = 5,
    warmup: int = 1,
    seed: int = 7,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    from gen_core import hypernetwork as H
    from gen_core.types import GenerationRequest

    engine = tiny_engine(model_dir, prefix="bench-hypernet-")
    widths = sorted(H.model_widths(engine.unet))
    modules = []
    for i in range(2):
        hn = H.Hypernetwork.new(f"m{i}", widths, H.Structure(activation="relu"), seed=i)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for mlp in hn.modules():  # non-zero last layers: a trained module, not the identity
                last = [m for m in mlp.linear if isinstance(m, torch.nn.Linear)][-1]
                last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.05)
        modules.append(hn.to(engine.device).train(False))
    request = GenerationRequest("a cat, masterpiece", width=size, height=size, steps=steps, sampler="Euler a", seed=seed)

    def render(chain):
        def go():
            with H.applied(engine, chain):
                return engine.generate(request).images[0].image

        return go

    variants = {"off": render([]), "one": render([(modules[0], 0.8)]), "two": render([(modules[0], 0.8), (modules[1], 0.5)])}

    def switch(_: int) -> None:
        with H.applied(engine, [(modules[0], 1.0)]):
            pass

    return {
        "bench": "hypernet",
        **tiny_engine_fields(engine),
        "size": f"{size}x{size}",
        "steps": steps,
        "runs": runs,
        "widths": widths,
        **add_on_figures(variants, switch, 50, runs, warmup),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model-dir", default=None, help="existing/created tiny model directory")
    args = parser.parse_args(argv)
    r = run(size=args.size, steps=args.steps, runs=args.runs, model_dir=args.model_dir)
    print(json.dumps(r, indent=2))
    print(
        f"hypernetwork on / off: one module {r['ratio_one_over_off']:.3f}×, two chained {r['ratio_two_over_off']:.3f}× "
        f"({r['size']}, {r['steps']} steps, medians of {r['runs']} interleaved runs); switching modules "
        f"{r['switch_ms_median']:.2f} ms ({r['switch_over_render'] * 100:.3f} % of a render); "
        f"plain output identical after switching: {r['off_identical_after']}"
    )


if __name__ == "__main__":
    main()
