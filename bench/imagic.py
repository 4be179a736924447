"""/edit (Imagic) cost: img2img vs /edit fast vs /edit quality vs a re-mix, same size and steps.

All four run on one engine in this process, side by side: an img2img of the input image (strength
1.0, so it denoises every step, the same number as the edit's sampling pass), an Imagic edit with
the ``fast`` and the ``quality`` preset (stages 1-3), and a re-mix of the fast state with another
η (stage 3 only).  Times are reported as ratios to the img2img; the η=0 reconstruction PSNR of
each preset (against the input image) is reported next to the img2img's.  The ``fast`` preset
targets ≤ 10× an img2img.

On the tiny model (default) the images are noise and the PSNRs only show that tuning moves the
output towards the input.  ``--sd15`` builds Stable Diffusion 1.5-sized random weights instead
(compute does not depend on the values; for a GPU) and also reports the peak GPU memory of the fast
edit, whose target is < 24 GB at 512×512.

    python -m bench.imagic [--size 128] [--steps 20] [--quality-scale 1.0] [--sd15] [--model-dir DIR]

``--toyworld DIR`` instead measures the speed/quality curve of fast-preset settings on a toy-world
model (a diffusers folder made by ``python -m toyworld train``), where quality is measurable: the
input is ``draw(Scene("red", "circle", "white"))``, the target text "a blue circle on a white
background".  One img2img of the input (timed again just before and after every edit: the ratio's denominator), then for each setting of :data:`SWEEP`
(or ``--only NAME,...``): the edit's time (stages 1-3 at the default η) over the img2img's, the η=0
reconstruction PSNR against the input (target ≥ 25 dB), the judge's verdict of the η=0.7 edit
(object blue, background and position kept) and the blue share over η ∈ :data:`ETAS` (monotonic?).
It prints a Markdown table; the fast preset's target is ≤ 10× with PSNR ≥ 25 dB.

    python -m bench.imagic --toyworld toyworld/model [--only NAME,NAME] [--steps 28] [--threads 1]

``run(...)`` and ``toyworld_sweep(...)`` return dicts for a bench runner.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import tiny_engine

PROMPT = "a photo of a pistachio cake"
log = logging.getLogger(__name__)


def _input_image(size: int) -> Image.Image:
    # Smooth colour fields with a few edges: something a denoiser can learn to reconstruct.
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    rgb[size // 4 : size // 2, size // 3 : 2 * size // 3] = (0.9, 0.2, 0.1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def sd15_sized_pipeline(seed: int = 0):
    """A Stable Diffusion 1.5-sized pipeline with random weights (UNet 860M, VAE, CLIP ViT-L text)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from gen_core.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline(seed)  # its real CLIP tokenizer and SD scheduler
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny.tokenizer, unet=unet, scheduler=tiny.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def _engine(sd15: bool, model_dir: str | Path | None):
    from gen_core.engine import Engine, resolve_device, resolve_dtype
    from gen_core.types import EngineConfig

    if not sd15:
        return tiny_engine(model_dir, prefix="bench-imagic-")
    config = EngineConfig(model_path="sd15-sized-random")
    device = resolve_device(config.device)
    pipe = sd15_sized_pipeline().to(device, resolve_dtype(config.dtype, device))
    Engine.configure_modules(pipe, config, device)
    return Engine(pipe, config, model_name="sd15-sized-random")


def _timed(fn) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, out


def run(
    size: int = 128,
    steps: int = 20,
    quality_scale: float = 1.0,
    sd15: bool = False,
    runs: int = 3,
    seed: int = 1234,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``quality_scale`` shrinks the quality preset's step counts (for quick runs); img2img and re-mix
    times are medians of ``runs``; each edit runs once (it is ~10-100 sampling passes long)."""
    from gen_core import imagic
    from gen_core.types import GenerationRequest

    engine = _engine(sd15, model_dir)
    source = _input_image(size)
    request = GenerationRequest(PROMPT, width=size, height=size, steps=steps, sampler="DDIM", cfg=7.0, seed=seed)
    quality = imagic.QUALITY.with_steps(
        max(1, round(imagic.QUALITY.embed_steps * quality_scale)), max(1, round(imagic.QUALITY.tune_steps * quality_scale))
    )
    img2img = dataclasses.replace(request, init_image=source, strength=1.0)
    warm_state, _ = imagic.tune(engine, source, request, imagic.FAST.with_steps(1, 1))  # warm-up of every path
    imagic.remix(engine, warm_state, [request], [0.5])
    timings = [_timed(lambda: engine.generate(img2img)) for _ in range(runs + 1)]
    img2img_s, i2i = statistics.median(t for t, _ in timings[1:]), timings[-1][1]
    out: dict[str, Any] = {
        "size": size, "steps": steps, "runs": runs, "device": str(engine.device), "dtype": str(engine.dtype).removeprefix("torch."),
        "model": engine.model_name, "img2img_s": img2img_s,
        "img2img_psnr": imagic.psnr(source, i2i.images[0].image),
    }  # fmt: skip
    states = {}
    for preset in (imagic.FAST, quality):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

        def edit(preset=preset):
            state, _ = imagic.tune(engine, source, request, preset)
            return state, imagic.remix(engine, state, [request], [0.7])

        seconds, (state, _) = _timed(edit)
        states[preset.name] = state
        reconstruction = imagic.remix(engine, state, [request], [0.0])[0].images[0].image
        out[f"{preset.name}_s"] = seconds
        out[f"{preset.name}_steps"] = [preset.embed_steps, preset.tune_steps]
        out[f"ratio_{preset.name}_over_img2img"] = seconds / img2img_s
        out[f"{preset.name}_psnr_eta0"] = imagic.psnr(source, reconstruction)
        if torch.cuda.is_available():
            out[f"{preset.name}_peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    remix_s = statistics.median(_timed(lambda: imagic.remix(engine, states["fast"], [request], [0.9]))[0] for _ in range(runs))
    out["remix_s"] = remix_s
    out["ratio_remix_over_img2img"] = remix_s / img2img_s
    out["fast_target_met"] = out["ratio_fast_over_img2img"] <= 10.0
    return out


# ----------------------------------------------------------------------------- toy-world curve

TOY_SOURCE = ("red", "circle", "white")
TOY_TARGET = "a blue circle on a white background"
ETAS = (0.0, 0.5, 0.7, 0.9, 1.1)
DEFAULT_ETA = 0.7
PSNR_TARGET = 25.0
RATIO_TARGET = 10.0
# Fast-preset settings of the curve: (name, embed_steps, embed_lr, tune_steps, tune_lr, lora_rank, batch).
SWEEP: tuple[tuple[str, int, float, int, float, int, int], ...] = (
    ("fast(50+100)", 50, 3e-3, 100, 1e-3, 8, 1),  # the preset before issue 16
    ("e50-t100-lr1e-2", 50, 3e-3, 100, 1e-2, 8, 1),
    ("e20-t80-lr1e-2", 20, 3e-3, 80, 1e-2, 8, 1),
    ("e20-t60-lr3e-2", 20, 3e-3, 60, 3e-2, 8, 1),
    ("e20-t60-lr1e-2-r16", 20, 3e-3, 60, 1e-2, 16, 1),
    ("e10-t40-lr1e-2-b2", 10, 3e-3, 40, 1e-2, 8, 2),
    ("e20-t120-lr3e-3", 20, 3e-3, 120, 3e-3, 8, 1),
)


def sweep_presets(only: str | None = None) -> list[Any]:
    from gen_core.imagic import ImagicPreset

    wanted = {n.strip() for n in only.split(",")} if only else None
    return [
        ImagicPreset(name, embed_steps=e, embed_lr=elr, tune_steps=t, tune_lr=tlr, lora_rank=r, batch=b)
        for name, e, elr, t, tlr, r, b in SWEEP
        if wanted is None or name in wanted
    ]


def _monotonic(values: list[float], tolerance: float = 0.01) -> bool:
    """Non-decreasing up to ``tolerance`` (a share of the picture) between neighbours."""
    return all(b >= a - tolerance for a, b in zip(values, values[1:], strict=False))


def toyworld_sweep(
    model_dir: str | Path,
    presets: list[Any] | None = None,
    steps: int = 28,
    sampler: str = "DDIM",
    seed: int = 1234,
    runs: int = 3,
    threads: int | None = 1,
) -> dict[str, Any]:
    """The speed/quality curve of fast-preset settings on a toy-world model (see the module doc).

    ``steps`` and ``sampler`` default to what /edit samples with (``[generation] default_steps``,
    ``[edit] sampler``), so the ratio is the one a member pays."""
    from bench.common import set_threads
    from gen_core import imagic
    from gen_core.engine import Engine
    from gen_core.types import EngineConfig, GenerationRequest
    from toyworld.judge import colour_share, judge
    from toyworld.world import Scene, draw

    set_threads(threads)
    engine = Engine.load(EngineConfig(model_path=str(model_dir), device="cpu", dtype="fp32"))
    presets = presets if presets is not None else sweep_presets()
    size = engine.geometry.native
    source = draw(Scene(*TOY_SOURCE), size, size)
    before = judge(source)
    request = GenerationRequest(TOY_TARGET, width=size, height=size, steps=steps, sampler=sampler, cfg=7.0, seed=seed)
    img2img = dataclasses.replace(request, init_image=source, strength=1.0)
    warm_state, _ = imagic.tune(engine, source, request, imagic.FAST.with_steps(1, 1))  # warm-up of every path
    imagic.remix(engine, warm_state, [request], [DEFAULT_ETA])
    timings = [_timed(lambda: engine.generate(img2img)) for _ in range(runs + 1)]
    img2img_s = statistics.median(t for t, _ in timings[1:])
    out: dict[str, Any] = {
        "model": str(model_dir), "size": size, "steps": steps, "sampler": sampler, "seed": seed,
        "torch_threads": torch.get_num_threads(), "img2img_s": img2img_s,
        "img2img_psnr": imagic.psnr(source, timings[-1][1].images[0].image), "source": dataclasses.asdict(before),
        "rows": [],
    }  # fmt: skip
    for preset in presets:

        def edit(preset=preset):
            state, _ = imagic.tune(engine, source, request, preset)
            return state, imagic.remix(engine, state, [request], [DEFAULT_ETA])

        # The CPU may be shared: the img2img is timed again around every edit, the ratio uses those.
        around = [_timed(lambda: engine.generate(img2img))[0]]
        seconds, (state, _) = _timed(edit)
        around.append(_timed(lambda: engine.generate(img2img))[0])
        local_img2img_s = statistics.mean(around)
        images = [r.images[0].image for r in imagic.remix(engine, state, [request] * len(ETAS), list(ETAS))]
        at = dict(zip(ETAS, images, strict=True))
        verdict = judge(at[DEFAULT_ETA])
        blue = [colour_share(im, "blue") for im in images]
        row = {
            "name": preset.name, "embed_steps": preset.embed_steps, "embed_lr": preset.embed_lr,
            "tune_steps": preset.tune_steps, "tune_lr": preset.tune_lr, "lora_rank": preset.lora_rank,
            "batch": preset.batch, "work_steps": preset.work_steps, "edit_s": seconds, "img2img_s": local_img2img_s,
            "ratio": seconds / local_img2img_s, "predicted_ratio": (preset.work_steps + steps) / steps,
            "psnr_eta0": imagic.psnr(source, at[0.0]), "eta0_colour": judge(at[0.0]).colour,
            "edit_colour": verdict.colour, "edit_blue": verdict.colour == "blue",
            "background_kept": verdict.background == before.background,
            "position_kept": verdict.position == before.position, "blue_shares": blue,
            "monotonic": _monotonic(blue) and blue[-1] >= blue[0] + 0.02,
        }  # fmt: skip
        row["meets"] = row["ratio"] <= RATIO_TARGET and row["psnr_eta0"] >= PSNR_TARGET
        out["rows"].append(row)
        log.info("%s", format_row(row))
    return out


TABLE_HEADER = (
    "| setting (embed+tune steps, lrs, rank, batch) | work | × img2img (model) | η=0 PSNR | η=0.7: colour, bg kept, pos kept "
    "| blue share η=0/.5/.7/.9/1.1 | monotonic | meets |\n|---|---|---|---|---|---|---|---|"
)


def format_row(r: dict[str, Any]) -> str:
    yes = {True: "✓", False: "✗"}
    shares = " / ".join(f"{v:.2f}" for v in r["blue_shares"])
    setting = (f"{r['name']}: {r['embed_steps']}+{r['tune_steps']}, {r['embed_lr']:g}/{r['tune_lr']:g}, "
               f"r{r['lora_rank']}, b{r['batch']}")  # fmt: skip
    return (
        f"| {setting} | {r['work_steps']} | {r['ratio']:.1f}× ({r['predicted_ratio']:.1f}×) | {r['psnr_eta0']:.1f} dB | {r['edit_colour']}, "
        f"{yes[r['background_kept']]}, {yes[r['position_kept']]} | {shares} | {yes[r['monotonic']]} | {yes[r['meets']]} |"
    )


def format_table(result: dict[str, Any]) -> str:
    head = (f"toy world {result['model']}: {result['size']} px, {result['steps']} {result['sampler']} steps, "
            f"{result['torch_threads']} thread(s); img2img {result['img2img_s']:.2f} s "
            f"(η-free PSNR {result['img2img_psnr']:.1f} dB)")  # fmt: skip
    return "\n".join([head, "", TABLE_HEADER, *(format_row(r) for r in result["rows"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, help="sampling steps (default 20; 28 with --toyworld, as /edit)")
    parser.add_argument("--quality-scale", type=float, default=1.0)
    parser.add_argument("--sd15", action="store_true", help="SD 1.5-sized random weights (GPU)")
    parser.add_argument("--model-dir")
    parser.add_argument("--toyworld", metavar="DIR", help="the speed/quality curve on this toy-world model")
    parser.add_argument("--only", help="with --toyworld: comma-separated SWEEP names")
    parser.add_argument("--threads", type=int, default=1, help="with --toyworld: torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.toyworld:
        log.setLevel(logging.INFO)
        toy = toyworld_sweep(args.toyworld, sweep_presets(args.only), steps=args.steps or 28, threads=args.threads)
        print(format_table(toy))  # noqa: T201 - CLI output
        print(json.dumps(toy, indent=2))  # noqa: T201
        return
    result = run(args.size, args.steps or 20, args.quality_scale, args.sd15, model_dir=args.model_dir)
    for name in ("fast", "quality", "remix"):
        print(f"{name:>8}: {result[f'ratio_{name}_over_img2img']:.2f}x img2img")  # noqa: T201 - CLI output
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
