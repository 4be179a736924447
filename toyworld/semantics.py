"""What a model's pictures show, measured with the judge: the numbers behind the semantic tests and
``python -m bench.semantics``.  Each function takes a loaded :class:`gen_core.engine.Engine` and
fixed seeds, so a figure is reproducible; the tests call them small with a safe bound, the
benchmark at full size beside chance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gen_core.types import GenerationRequest
from services.config import GenerationConfig
from toyworld.judge import Verdict, colour_share, judge
from toyworld.world import COLOURS, POSITIONS, SHAPES, SIZES, STYLES, Scene, draw, held_out_combinations

CHANCE = {
    "colour": 1 / len(COLOURS),
    "background": 1 / len(COLOURS),
    "shape": 1 / len(SHAPES),
    "size": 1 / len(SIZES),
    "position": 1 / len(POSITIONS),
    "style": 1 / len(STYLES),
}
STEPS = 20


def simple_prompt(scene: Scene) -> str:
    """The form every model must follow: "a red circle on a blue background"."""
    return f"a {scene.colour} {scene.shape} on a {scene.background} background"


def held_out_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` colour-shape-background combinations the model never saw in training (cycled if needed)."""
    combos = held_out_combinations()
    random.Random(seed).shuffle(combos)
    return [Scene(c, s, b) for c, s, b in (combos * (n // len(combos) + 1))[:n]]


def render(engine, prompts: Sequence[str], seeds: Sequence[int], size: int | None = None, **options) -> list:
    """One picture per (prompt, seed), batched by the engine, on the bot's default guidance (and
    ``STEPS`` steps) unless ``options`` say otherwise."""
    side = size or engine.geometry.native
    options = {"steps": STEPS, "guidance_min_sigma": GenerationConfig.guidance_min_sigma} | options
    reqs = [
        GenerationRequest(prompt=p, width=side, height=side, seed=s, **options)
        for p in prompts
        for s in seeds
    ]
    return [r.images[0].image for r in engine.generate_batch(reqs)]


def accuracy(
    scenes: Sequence[Scene], verdicts: Sequence[Verdict], attributes: Sequence[str]
) -> dict[str, float]:
    return {
        a: float(np.mean([getattr(s, a) == getattr(v, a) for s, v in zip(scenes, verdicts, strict=True)]))
        for a in attributes
    }


def prompt_accuracy(
    engine, n: int, seeds: Sequence[int], prompt_of=simple_prompt, **options
) -> dict[str, float]:
    """Share of pictures whose colour, background and shape are those the held-out prompt asked for."""
    scenes = held_out_scenes(n)
    images = render(engine, [prompt_of(s) for s in scenes], seeds, **options)
    repeated = [s for s in scenes for _ in seeds]
    return accuracy(repeated, [judge(im) for im in images], ("colour", "background", "shape"))


def mean_share(images, colour: str) -> float:
    return float(np.mean([colour_share(im, colour) for im in images]))


def negative_effect(engine, seeds: Sequence[int]) -> tuple[float, float]:
    """Red's share of "a red circle on a blue background" without and with the negative prompt "red"."""
    prompt = "a red circle on a blue background"
    return (
        mean_share(render(engine, [prompt], seeds), "red"),
        mean_share(render(engine, [prompt], seeds, negative="red"), "red"),
    )


def emphasis_effect(engine, seeds: Sequence[int]) -> tuple[float, float]:
    """Red's share with ``(red:0.6)`` and with ``(red:1.4)`` in a prompt torn between red and green."""

    def share(weight: float) -> float:
        prompt = f"a ({'red'}:{weight}) green circle on a white background"
        return mean_share(render(engine, [prompt], seeds), "red")

    return share(0.6), share(1.4)


def long_prompt(scene: Scene) -> str:
    """A three-chunk prompt whose only attribute words sit in the third chunk."""
    filler = ", ".join(["a simple drawing"] * 15)  # 60 tokens: one chunk each
    return f"{filler} BREAK {filler} BREAK {simple_prompt(scene)}"


def long_prompt_accuracy(engine, n: int, seeds: Sequence[int]) -> dict[str, float]:
    return prompt_accuracy(engine, n, seeds, prompt_of=long_prompt)


def vae_ceiling(engine, n: int, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """The judge on the generator's own pictures and on the model's VAE round trip of them:
    what a perfect generator would score, and the most this model's decoder allows."""
    import torch

    rng = random.Random(seed)
    scenes = held_out_scenes(n, seed)
    side = engine.geometry.native
    pictures = [draw(s, side, side, jitter=rng) for s in scenes]
    with engine.lock, torch.inference_mode():
        processor = engine.img2img.image_processor
        x = torch.cat([processor.preprocess(p) for p in pictures]).to(engine.device, engine.vae.dtype)
        decoded = engine.vae.decode(engine.vae.encode(x).latent_dist.mode()).sample
        round_trip = processor.postprocess(decoded, output_type="pil")
    attributes = ("colour", "background", "shape")
    return (
        accuracy(scenes, [judge(p) for p in pictures], attributes),
        accuracy(scenes, [judge(p) for p in round_trip], attributes),
    )


def redness(images) -> float:
    """Mean red-minus-blue of the pictures' non-white pixels (the object on a white background): from
    about -170 for a blue object through purple (near 0) to about +170 for a red one."""
    arr = np.stack([np.asarray(im, dtype=np.float32)[..., :3] for im in images])
    body = np.abs(arr - 245).sum(-1) > 120
    return float(((arr[..., 0] - arr[..., 2]) * body).sum() / max(1, body.sum()))


def mix_redness(
    engine, seeds: Sequence[int], weights: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
) -> list[float]:
    """The object's :func:`redness` in blends "a red circle…:w | a blue circle…:1-w" (NovelAI-style mix)."""
    from gen_core.mix import BLEND, MixPart, MixRequest, generate_mix

    side = engine.geometry.native
    red, blue = "a red circle on a white background", "a blue circle on a white background"
    values = []
    for w in weights:
        reqs = [
            MixRequest(
                GenerationRequest(prompt="", width=side, height=side, steps=STEPS, seed=s),
                [MixPart(red, w), MixPart(blue, 1 - w)],
                BLEND,
                normalize=False,
            )
            for s in seeds
        ]
        values.append(redness([r.images[0].image for r in generate_mix(engine, reqs)]))
    return values


@dataclass(frozen=True)
class Figure:
    """One number of the semantics benchmark beside its chance level."""

    name: str
    value: float
    chance: float | None = None

    def row(self) -> str:
        chance = "" if self.chance is None else f"{self.chance:.2f}"
        return f"| {self.name} | {self.value:.3f} | {chance} |"


def inpaint_effect(engine, seeds: Sequence[int], prompt: str = "a green square") -> tuple[float, float]:
    """Green's and red's shares inside a square mask over a red circle, repainted with ``prompt``."""
    from PIL import Image

    from gen_core.outpaint import InpaintRequest, feather_mask, inpaint_batch

    side = engine.geometry.native
    source = draw(Scene("red", "circle", "white", size="large"), side, side)
    hole = np.zeros((side, side), np.uint8)
    box = slice(side * 3 // 16, side * 13 // 16)
    hole[box, box] = 255
    mask = feather_mask(Image.fromarray(hole, "L"), 2)
    items = [InpaintRequest(GenerationRequest(prompt=prompt, width=side, height=side, steps=STEPS, seed=s,
                                              init_image=source, strength=1.0), mask) for s in seeds]  # fmt: skip
    inside = [np.asarray(r[0].image)[box, box] for r in inpaint_batch(engine, items)]
    return mean_share(inside, "green"), mean_share(inside, "red")


def img2img_colours(
    engine, seeds: Sequence[int], strengths: Sequence[float], noise: float = 0.0, **options
) -> dict[str, dict[str, float]]:
    """A red circle redrawn as "a blue circle on a white background" at each strength: the share of
    pictures the judge still calls red, the share it calls blue, and their mean pairwise distance
    (per-seed spread, in 0-255 pixel units)."""
    side = engine.geometry.native
    source = draw(Scene("red", "circle", "white", size="large", position="left"), side, side)
    out = {}
    for strength in strengths:
        images = render(engine, ["a blue circle on a white background"], seeds, init_image=source,
                        strength=strength, noise=noise, **options)  # fmt: skip
        arrays = [np.asarray(im, np.float32) for im in images]
        verdicts = [judge(im) for im in images]
        out[f"{strength:g}"] = {
            "red": float(np.mean([v.colour == "red" for v in verdicts])),
            "blue": float(np.mean([v.colour == "blue" for v in verdicts])),
            "spread": float(
                np.mean([np.abs(a - b).mean() for i, a in enumerate(arrays) for b in arrays[i + 1 :]])
            ),
        }
    return out


def vary_distances(engine, seeds: Sequence[int], strengths: Sequence[float]) -> dict[str, float]:
    """Mean distance (0-255 pixel units) of variations of one red circle from it, by strength: what
    Vary (Subtle) and Vary (Strong) do with a fresh seed each, over ``seeds``."""
    prompt = "a red circle on a white background"
    [source] = render(engine, [prompt], [10])
    before = np.asarray(source, np.float32)
    return {f"{s:g}": float(np.mean([np.abs(np.asarray(im, np.float32) - before).mean()
                                     for im in render(engine, [prompt], seeds, init_image=source, strength=s)]))
            for s in strengths}  # fmt: skip


def striped_set(side: int, n: int = 16) -> tuple[list, list[str]]:
    """``n`` striped pictures (fixed seed) whose captions never say "striped": a style to train into a module."""
    rng = random.Random(0)
    scenes = [Scene(rng.choice(("red", "green", "blue", "yellow")), rng.choice(SHAPES), "white", size="large",
                    style="striped") for _ in range(n)]  # fmt: skip
    return [draw(s, side, side, jitter=rng) for s in scenes], [simple_prompt(s) for s in scenes]


def hypernet_stripes(engine, seeds: Sequence[int], steps: int = 200, lr: float = 1e-3) -> tuple[float, float]:
    """Mean stripe score of plain prompts without and with a hypernetwork trained on 16 striped pictures
    whose captions never say "striped"."""
    from gen_core import hypernetwork

    side = engine.geometry.native
    pictures, captions = striped_set(side)
    trained = hypernetwork.train(engine, "stripes", pictures, captions, [(side, side)],
                                 hypernetwork.TrainConfig(steps=steps, lr=lr, batch_size=4)).hypernetwork  # fmt: skip
    prompts = ["a red circle on a white background", "a blue square on a white background"]

    def stripes(chain) -> float:
        with hypernetwork.applied(engine, chain):
            return float(np.mean([judge(im).stripe_score for im in render(engine, prompts, seeds)]))

    return stripes(()), stripes([(trained, 1.0)])
