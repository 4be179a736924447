"""What the toy-world model's pictures show, beside chance and beside the random tiny model.

    python -m bench.semantics [--prompts 50] [--seeds 2] [--steps 20]

Every figure is the judge's verdict on pictures made with fixed seeds (``toyworld.semantics``): prompt
following on colour-shape-background combinations never seen in training (at CFG 7 and 1, clip skip
2 and 1, and with the colours in the third 75-token chunk), the effect of a negative prompt and of
emphasis on red's share, a blend's colour as its weight moves, an inpainted square's colour, img2img's
colour and per-seed spread by strength and noise, how far Vary (Subtle) and (Strong) move, and a trained hypernetwork's stripes.  Ceilings: the judge on the
generator's own pictures and on the model's VAE round trip of them.  Baseline: the same figures on
the random tiny model (at chance).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from bench.common import tiny_engine


def measure(engine, prompts: int, seeds: tuple[int, ...], steps: int, ceilings: bool) -> dict[str, Any]:
    from services.config import GenerationConfig
    from toyworld import semantics as sem

    sem_steps = {"steps": steps}
    out: dict[str, Any] = {
        "cfg7_clip2": sem.prompt_accuracy(engine, prompts, seeds, **sem_steps),
        "cfg1": sem.prompt_accuracy(engine, prompts, seeds, cfg=1.0, **sem_steps),
        "clip_skip1": sem.prompt_accuracy(engine, prompts, seeds, clip_skip=1, **sem_steps),
        "third_chunk": sem.prompt_accuracy(engine, prompts, seeds, prompt_of=sem.long_prompt, **sem_steps),
    }
    many = tuple(range(100, 100 + 4 * len(seeds)))
    out["red_share_without_with_negative"] = sem.negative_effect(engine, many)
    out["red_share_emphasis_0.6_1.4"] = sem.emphasis_effect(engine, many)
    out["mix_redness_by_weight"] = dict(
        zip(("0", "0.25", "0.5", "0.75", "1"), sem.mix_redness(engine, many), strict=True)
    )
    out["inpaint_green_red_in_mask"] = sem.inpaint_effect(engine, many)
    out["img2img_by_strength"] = sem.img2img_colours(engine, many, (0.05, 0.1, 0.2, 0.3, 0.8))
    out["img2img_noise_1_at_0.3"] = sem.img2img_colours(engine, many, (0.3,), noise=1.0)
    out["img2img_ngms_0.5"] = sem.img2img_colours(engine, many, (0.1, 0.2), guidance_min_sigma=0.5)
    out["ngms_0.5"] = sem.prompt_accuracy(engine, prompts, seeds, guidance_min_sigma=0.5, **sem_steps)
    vary = GenerationConfig()
    out["vary_distance_subtle_strong"] = sem.vary_distances(
        engine, many, (vary.vary_subtle_strength, vary.vary_strong_strength)
    )
    out["hypernet_stripes_off_on"] = sem.hypernet_stripes(engine, many)
    if ceilings:
        truth, round_trip = sem.vae_ceiling(engine, prompts * len(seeds))
        out["judge_on_ground_truth"], out["judge_on_vae_round_trip"] = truth, round_trip
    return out


def run(prompts: int = 50, seeds: int = 2, steps: int = 20, model_dir=None) -> dict[str, Any]:
    from gen_core.engine import Engine
    from gen_core.types import EngineConfig
    from toyworld import MODEL_DIR
    from toyworld import semantics as sem

    seed_list = tuple(range(1, seeds + 1))
    started = time.perf_counter()
    toy = Engine.load(EngineConfig(model_path=str(MODEL_DIR), device="cpu", dtype="fp32"))
    result = {
        "prompts": prompts,
        "seeds": seeds,
        "steps": steps,
        "chance": sem.CHANCE,
        "toy": measure(toy, prompts, seed_list, steps, ceilings=True),
    }
    # The random tiny model at its own native size (512 px) would take minutes per figure on the CPU;
    # noise is noise at any size, so it draws toy-sized pictures.
    tiny = tiny_engine(model_dir)
    result["random_tiny"] = {
        "cfg7_clip2": sem.prompt_accuracy(tiny, prompts, seed_list, size=toy.geometry.native, steps=steps)
    }
    result["seconds"] = round(time.perf_counter() - started)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.semantics", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(args.prompts, args.seeds, args.steps), indent=2))


if __name__ == "__main__":
    main()
