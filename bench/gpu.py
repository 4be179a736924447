"""GPU benchmark of the real architecture: Stable Diffusion 1.5-sized random weights through the engine.

Builds SD 1.5-sized components with random weights (compute does not depend on the values and no
hub is reachable): UNet 320/640/1280/1280 channels with cross-attention 768, CLIP text encoder (12
layers, hidden 768, the real CLIP tokenizer), VAE 128/256/512/512 -- ``bench.imagic``'s builder.
The pipeline is saved in diffusers layout and loaded through ``Engine.load``, so the measured path
is the worker's.  Then, on CUDA, in this order (each section checks the time budget first):

1. fp16 engine: it/s and images/s at 512x512 for batch 1, 4 and 8 (SDPA, channels_last), then
   channels_last off and eager (non-SDPA) attention at batch 1 and 4, then the Imagic /edit
   ``fast`` preset (time, ratio to an img2img of the same steps, peak memory) with
   ``bench.imagic``'s input image and ``gen_core.imagic``;
2. bf16 engine: batch 1, 4 and 8;
3. the worker's batching: ``bench.batching.run`` (4 requests via ``generate_batch`` vs one by one);
4. hypernetwork on vs off (``gen_core.hypernetwork.applied``, a module on every attention width,
   batch 1 and 4) on a fresh fp16 engine, if ``gen_core/hypernetwork.py`` exists (the table says
   "skipped" otherwise);
5. SDXL-sized random weights (UNet 2.6 B with SDXL's blocks and size conditioning, CLIP ViT-L + bigG,
   the SDXL VAE, fp16 with its fp32 decode) through ``Engine.load`` at 1024x1024, batch 1 and 4, then
   one rank-32 LoRA (every attention projection) on vs off and the cost of switching LoRA sets between
   jobs against one render (``gen_core.lora`` as the worker uses it);
6. ``torch.compile`` of the UNet (as ``EngineConfig.compile`` does): compile time (first call minus
   a steady call) and the compiled it/s; ``--skip-compile`` leaves it out.

it/s counts denoising steps per second of one pipeline call (a batch of N images is one step per
step, CFG included), timed between the end of step 1 and the end of the last step through the
engine's progress callback (with a CUDA sync at those two points only).  images/s is the batch size
over the whole ``engine.generate`` call (prompt encoding, sampling, VAE decode, PIL conversion).
Peak memory is ``torch.cuda.max_memory_allocated`` over the warm-up and timed runs, weights included.

    python -m bench.gpu [--quick] [--skip-compile] [--output bench/GPU_RESULTS.md] [--model-dir DIR]
    python -m bench.gpu --tiny        # tiny model, 64x64, a few seconds on the CPU (for tests)

The full run is sized for < 10 minutes on one H100 (``--budget``, default 560 s, skips what no longer
fits); ``--quick`` halves the steps and runs.  The table goes to ``--output`` and stdout.  Exit
status 1 if a section failed with an error (a skipped section is not a failure).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.util
import json
import logging
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUTPUT = Path(__file__).with_name("GPU_RESULTS.md")
PROMPT = "masterpiece, best quality, a lighthouse on a cliff at sunset, dramatic sky, detailed"
NEGATIVE = "lowres, bad anatomy, bad hands, text, error, worst quality, low quality, jpeg artifacts"
SAMPLER = "Euler a"
CFG = 7.0
SEED = 1000

# Row labels (the test checks them).
FP16 = "fp16 · SDPA · channels_last"
BF16 = "bf16 · SDPA · channels_last"
CONTIGUOUS = "fp16 · SDPA · channels_last off"
EAGER = "fp16 · eager attention · channels_last"
COMPILED = "fp16 · SDPA · channels_last · torch.compile(UNet)"
HYPERNET = "fp16 · SDPA · channels_last · hypernetwork"
SDXL = "SDXL · fp16 · SDPA · channels_last"
SDXL_LORA = "SDXL · fp16 · SDPA · channels_last · one LoRA"
VARIANT_BATCHES = (1, 4)

log = logging.getLogger("bench.gpu")


# ----------------------------------------------------------------------------- results


@dataclass
class Throughput:
    config: str
    batch: int
    its: float | None = None  # denoising it/s (median)
    images_per_s: float | None = None
    call_s: float | None = None  # median seconds per generate call
    peak_gib: float | None = None
    note: str = ""
    runs_s: list[float] = field(default_factory=list)
    first_call_s: float | None = None


@dataclass
class Other:
    measurement: str
    value: str
    peak_gib: float | None = None
    note: str = ""


@dataclass
class Results:
    throughput: list[Throughput] = field(default_factory=list)
    other: list[Other] = field(default_factory=list)
    sections_s: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


class Budget:
    """Wall-clock budget of the whole run: a section or configuration that no longer fits is skipped."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds


# ----------------------------------------------------------------------------- model


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_model(out_dir: Path, tiny: bool, device: str, seed: int = 0) -> dict[str, Any]:
    """Write the benchmark model (diffusers layout, fp16 weights) to ``out_dir``; return its sizes.

    SD 1.5-sized: ``bench.imagic.sd15_sized_pipeline`` (random init runs on ``device``: seconds on a
    GPU instead of a minute on the CPU).  ``tiny``: ``gen_core.tiny.build_tiny_pipeline``.
    """
    if tiny:
        from gen_core.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(seed)
    else:
        from bench.imagic import sd15_sized_pipeline

        with torch.device(device):
            pipe = sd15_sized_pipeline(seed)
    pipe.to(torch.float16)
    sizes = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder")
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "bench_gpu_model.json").write_text(json.dumps({"tiny": tiny, "parameters": sizes}))
    del pipe
    _free()
    return sizes


def ensure_model(out_dir: Path, tiny: bool, device: str) -> tuple[dict[str, Any], bool]:
    """Reuse a model written by an earlier run with the same size, else build it.  -> (sizes, built)."""
    marker = out_dir / "bench_gpu_model.json"
    if marker.exists() and (out_dir / "model_index.json").exists():
        meta = json.loads(marker.read_text())
        if meta.get("tiny") == tiny:
            return meta["parameters"], False
    if (out_dir / "model_index.json").exists():
        raise SystemExit(f"{out_dir} holds another model; give an empty or new --model-dir")
    return build_model(out_dir, tiny, device), True


def load_engine(model_dir: Path, device: str, dtype: str, **config: Any):
    from gen_core.engine import Engine
    from gen_core.types import EngineConfig

    return Engine.load(
        EngineConfig(model_path=str(model_dir), device=device, dtype=dtype, channels_last=True, **config)
    )


def configure(engine, *, attention: str = "sdpa", channels_last: bool = True) -> None:
    """Re-apply the engine's module configuration (``Engine.configure_modules``) with other settings."""
    from gen_core.engine import Engine

    config = dataclasses.replace(
        engine.config, attention=attention, channels_last=channels_last, compile=False
    )
    Engine.configure_modules(engine.txt2img, config, engine.device)
    if not channels_last:  # configure_modules only ever switches it on
        engine.unet.to(memory_format=torch.contiguous_format)
    engine.config = config


# ----------------------------------------------------------------------------- measurements


def measure(
    engine, config: str, batch: int, size: int, steps: int, runs: int, warmup: int = 1, loras: tuple = ()
) -> Throughput:
    """Median it/s and images/s of ``engine.generate`` for ``batch`` images of one request (with ``loras``)."""
    from gen_core.types import GenerationRequest

    device = engine.device
    request = GenerationRequest(
        PROMPT, negative=NEGATIVE, width=size, height=size, steps=steps, cfg=CFG, sampler=SAMPLER, seed=SEED,
        count=batch, loras=loras,
    )  # fmt: skip
    marks: dict[int, float] = {}

    def progress(p) -> None:
        if p.step == 1 or p.step == p.total:
            _sync(device)
            marks[p.step] = time.perf_counter()

    def call() -> tuple[float, float | None]:
        marks.clear()
        _sync(device)
        started = time.perf_counter()
        engine.generate(request, progress=progress, preview_every=0)
        _sync(device)
        seconds = time.perf_counter() - started
        its = (
            (steps - 1) / (marks[steps] - marks[1])
            if steps > 1 and marks.get(steps, 0) > marks.get(1, 0)
            else None
        )
        return seconds, its

    _reset_peak(device)
    first = None
    for i in range(warmup):
        seconds, _ = call()
        if i == 0:
            first = seconds
    timed = [call() for _ in range(runs)]
    call_s = statistics.median(s for s, _ in timed)
    its_values = [i for _, i in timed if i is not None]
    return Throughput(
        config=config,
        batch=batch,
        its=statistics.median(its_values) if its_values else None,
        images_per_s=batch / call_s,
        call_s=call_s,
        peak_gib=_peak_gib(device),
        runs_s=[round(s, 4) for s, _ in timed],
        first_call_s=first,
    )


def sweep(engine, results: Results, budget: Budget, config: str, batches, args, reserve: float) -> None:
    """``measure`` for each batch size; a batch whose estimated time no longer fits is skipped."""
    per_image_s: float | None = None
    for batch in batches:
        estimate = 0.0 if per_image_s is None else per_image_s * batch * (args.runs + 1)
        if not budget.fits(estimate + reserve):
            results.throughput.append(Throughput(config, batch, note="skipped: time budget"))
            continue
        try:
            row = measure(engine, config, batch, args.size, args.steps, args.runs)
        except torch.cuda.OutOfMemoryError as exc:
            _free()
            results.throughput.append(
                Throughput(config, batch, note=f"out of memory: {str(exc).splitlines()[0]}")
            )
            continue
        per_image_s = row.call_s / batch
        results.throughput.append(row)
        log.warning("  %s batch %d: %.2f it/s, %.2f img/s", config, batch, row.its or 0, row.images_per_s)


def section_fp16(model_dir: Path, results: Results, budget: Budget, args) -> None:
    started = time.perf_counter()
    engine = load_engine(model_dir, args.device, "fp16")
    load_s = time.perf_counter() - started
    results.other.append(
        Other(
            "Engine.load (fp16, from the saved diffusers folder)",
            f"{load_s:.1f} s",
            note=f"{engine.model_name} on {engine.device}",
        )
    )
    sweep(engine, results, budget, FP16, args.batches, args, reserve=args.reserve)
    if not args.skip_variants:
        configure(engine, attention="sdpa", channels_last=False)
        sweep(
            engine,
            results,
            budget,
            CONTIGUOUS,
            [b for b in VARIANT_BATCHES if b in args.batches] or [1],
            args,
            reserve=args.reserve,
        )
        configure(engine, attention="eager", channels_last=True)
        sweep(
            engine,
            results,
            budget,
            EAGER,
            [b for b in VARIANT_BATCHES if b in args.batches] or [1],
            args,
            reserve=args.reserve,
        )
        configure(engine, attention="sdpa", channels_last=True)
    if args.skip_imagic:
        results.other.append(Other("Imagic /edit fast", "—", note="skipped: --skip-imagic"))
    elif not budget.fits(args.imagic_min_s + args.reserve):
        results.other.append(Other("Imagic /edit fast", "—", note="skipped: time budget"))
    else:
        measure_imagic(engine, results, args)
    del engine
    _free()


def measure_imagic(engine, results: Results, args) -> None:
    """The /edit ``fast`` preset (stages 1-3 at η 0.7) on ``engine``, with ``bench.imagic``'s input."""
    from bench import imagic as bench_imagic
    from gen_core import imagic
    from gen_core.types import GenerationRequest

    size, steps = args.size, args.imagic_steps
    preset = imagic.FAST if args.imagic_scale == 1.0 else imagic.FAST.with_steps(
        max(1, round(imagic.FAST.embed_steps * args.imagic_scale)), max(1, round(imagic.FAST.tune_steps * args.imagic_scale))
    )  # fmt: skip
    source = bench_imagic._input_image(size)
    request = GenerationRequest(
        bench_imagic.PROMPT, width=size, height=size, steps=steps, sampler="DDIM", cfg=CFG, seed=1234
    )
    img2img = dataclasses.replace(request, init_image=source, strength=1.0)
    warm, _ = imagic.tune(engine, source, request, imagic.FAST.with_steps(1, 1))  # warm-up of every path
    imagic.remix(engine, warm, [request], [0.5])
    timings = [bench_imagic._timed(lambda: engine.generate(img2img))[0] for _ in range(max(2, args.runs) + 1)]
    img2img_s = statistics.median(timings[1:])
    _reset_peak(engine.device)

    def edit():
        state, _ = imagic.tune(engine, source, request, preset)
        return state, imagic.remix(engine, state, [request], [0.7])

    edit_s, (state, _) = bench_imagic._timed(edit)
    peak = _peak_gib(engine.device)
    remix_s = statistics.median(
        bench_imagic._timed(lambda: imagic.remix(engine, state, [request], [0.9]))[0]
        for _ in range(max(2, args.runs))
    )
    steps_label = f"{preset.embed_steps} + {preset.tune_steps} steps" + (
        "" if preset == imagic.FAST else ", scaled"
    )
    results.other.append(Other(
        f"Imagic /edit fast ({steps_label}, then {steps} DDIM steps)", f"{edit_s:.1f} s", peak,
        f"{edit_s / img2img_s:.1f}× an img2img of {steps} steps ({img2img_s:.2f} s; target ≤ 10× with the real "
        f"preset); peak target < 24 GB at 512×512; gradient checkpointing on CUDA",
    ))  # fmt: skip
    results.other.append(
        Other(
            "Imagic re-mix (η button, no optimisation)",
            f"{remix_s:.2f} s",
            note=f"{remix_s / img2img_s:.2f}× img2img",
        )
    )
    results.raw["imagic"] = {
        "edit_s": edit_s,
        "img2img_s": img2img_s,
        "remix_s": remix_s,
        "peak_gib": peak,
        "preset": [preset.embed_steps, preset.tune_steps],
        "steps": steps,
    }


def section_bf16(model_dir: Path, results: Results, budget: Budget, args) -> None:
    engine = load_engine(model_dir, args.device, "bf16")
    sweep(engine, results, budget, BF16, args.batches, args, reserve=args.reserve)
    del engine
    _free()


def section_batching(model_dir: Path, results: Results, budget: Budget, args) -> None:
    from bench import batching

    label = f"Worker batching: {args.batch_requests} requests, generate_batch vs one by one"
    if not budget.fits(args.batching_min_s + args.reserve):
        results.other.append(Other(label, "—", note="skipped: time budget"))
        return
    _reset_peak(torch.device(args.device))
    r = batching.run(
        size=args.size,
        steps=args.steps,
        runs=args.runs,
        n_requests=args.batch_requests,
        model_dir=model_dir,
        stage_split=False,
    )  # its own Engine.load, default config (fp16 on CUDA)
    results.raw["batching"] = r
    results.other.append(Other(
        label, f"{r['throughput_ratio']:.2f}× throughput", _peak_gib(torch.device(args.device)),
        f"{r['images_per_s_batched']:.2f} vs {r['images_per_s_sequential']:.2f} img/s "
        f"({r['median_s_batched']:.2f} vs {r['median_s_sequential']:.2f} s), {r['dtype']}, {r['steps']} steps "
        f"{r['sampler']}, {r['unet_batches']} UNet batch(es), medians of {r['runs']} interleaved runs; "
        f"max pixel difference {r['max_pixel_diff']}/255; bench.batching.run",
    ))  # fmt: skip


def section_hypernetwork(model_dir: Path, results: Results, budget: Budget, args) -> None:
    """A hypernetwork on every attention width of the UNet (as A1111's default ones are) vs none,
    through ``gen_core.hypernetwork.applied`` on a fresh fp16 engine, at batch 1 and 4."""
    label = "Hypernetwork on / off (time per call)"
    if importlib.util.find_spec("gen_core.hypernetwork") is None:
        results.other.append(Other(label, "—", note="skipped: gen_core/hypernetwork.py does not exist yet"))
        results.throughput.append(Throughput(HYPERNET, 1, note="skipped: no gen_core/hypernetwork.py"))
        return
    if not budget.fits(args.hypernetwork_min_s + args.reserve):
        results.other.append(Other(label, "—", note="skipped: time budget"))
        results.throughput.append(Throughput(HYPERNET, 1, note="skipped: time budget"))
        return
    from gen_core import hypernetwork

    engine = load_engine(model_dir, args.device, "fp16")
    widths = sorted(hypernetwork.model_widths(engine.unet))
    module = hypernetwork.Hypernetwork.new("bench", widths, seed=0).to(engine.device)
    structure = "/".join(f"{x:g}" for x in getattr(module.structure, "layers", ())) or "default"
    for batch in [b for b in VARIANT_BATCHES if b in args.batches] or [1]:
        off = measure(
            engine, f"{FP16} (reference for the hypernetwork)", batch, args.size, args.steps, args.runs
        )
        with hypernetwork.applied(engine, [(module, 1.0)]):
            on = measure(engine, HYPERNET, batch, args.size, args.steps, args.runs)
        ratio = on.call_s / off.call_s
        on.note = (
            f"widths {', '.join(map(str, widths))}, layer structure {structure}, strength 1; "
            f"{ratio:.3f}× the time of the same call without it ({off.call_s:.3f} s, {_num(off.its, '.2f')} it/s)"
        )
        results.throughput.append(on)
        results.other.append(
            Other(
                f"{label}, batch {batch}",
                f"{ratio:.3f}×",
                on.peak_gib,
                f"target ≤ 1.05×; it/s {_num(on.its, '.2f')} vs {_num(off.its, '.2f')}; "
                "gen_core.hypernetwork.applied on the worker's engine",
            )
        )
        results.raw.setdefault("hypernetwork", []).append(
            {"batch": batch, "on": dataclasses.asdict(on), "off": dataclasses.asdict(off), "ratio": ratio}
        )
        log.warning("  hypernetwork batch %d: %.3fx", batch, ratio)
    del engine, module
    _free()


def sdxl_sized_pipeline(seed: int = 0):
    """An SDXL-sized pipeline with random weights: UNet 320/640/1280 with 1/2/10 transformer layers,
    cross-attention 2048 and the text-time size conditioning; CLIP ViT-L (12 layers, 768) and OpenCLIP
    bigG (32 layers, 1280, projection 1280) with the real CLIP tokenizer; the SDXL VAE (fp16 needs its
    fp32 decode: ``force_upcast``)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from gen_core.tiny import load_clip_tokenizer

    def text(hidden: int, layers: int, heads: int, pad: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=1280,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=pad,
        )  # fmt: skip

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )  # fmt: skip
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
        scaling_factor=0.13025, force_upcast=True,
    )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text(768, 12, 12, 49407, "quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(text(1280, 32, 20, 0, "gelu")),
        tokenizer=load_clip_tokenizer(),
        tokenizer_2=load_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
        ),
    )


def section_sdxl(model_dir: Path, results: Results, budget: Budget, args) -> None:
    """SDXL-sized random weights (``--tiny``: the tiny SDXL model) through ``Engine.load``: throughput at
    batch 1 and 4, one LoRA on / off, and switching LoRA sets against one render."""
    if not budget.fits(args.sdxl_min_s + args.reserve):
        results.throughput.append(Throughput(SDXL, 1, note="skipped: time budget"))
        results.other.append(Other("SDXL: one LoRA on / off", "—", note="skipped: time budget"))
        return
    from bench.lora import random_lora, switch_seconds
    from gen_core.lora import LoraUse

    with tempfile.TemporaryDirectory(prefix="bench-gpu-sdxl-") as tmp:
        folder = Path(tmp) / "sdxl"
        started = time.perf_counter()
        if args.tiny:
            from gen_core.tiny import write_tiny_model

            write_tiny_model(folder, family="sdxl")
        else:
            with torch.device(args.device):
                pipe = sdxl_sized_pipeline()
            pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
            results.info["sdxl_parameters"] = {
                name: sum(p.numel() for p in getattr(pipe, name).parameters())
                for name in ("unet", "vae", "text_encoder", "text_encoder_2")
            }
            del pipe
            _free()
        built_s = time.perf_counter() - started
        engine = load_engine(folder, args.device, "fp16")
        params = ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in results.info.get("sdxl_parameters", {}).items())
        results.other.append(Other("SDXL-sized random model: build + save, Engine.load", f"{built_s:.1f} s, "
                                   f"{time.perf_counter() - started - built_s:.1f} s", note=params or "tiny SDXL model"))  # fmt: skip
        for batch in [b for b in VARIANT_BATCHES if b in args.batches] or [1]:
            try:
                row = measure(engine, SDXL, batch, args.sdxl_size, args.steps, args.runs)
            except torch.cuda.OutOfMemoryError as exc:
                _free()
                row = Throughput(SDXL, batch, note=f"out of memory: {str(exc).splitlines()[0]}")
            results.throughput.append(row)
            log.warning("  SDXL batch %d: %.2f it/s", batch, row.its or 0)

        files = []
        for i in range(2):
            path = Path(tmp) / f"lora{i}.safetensors"
            path.write_bytes(random_lora(engine.unet, rank=32, seed=i))
            files.append(str(path))
        one = (LoraUse(files[0], 0.8, 0.8),)
        off = measure(engine, f"{SDXL} (reference for the LoRA)", 1, args.sdxl_size, args.steps, args.runs)
        on = measure(engine, SDXL_LORA, 1, args.sdxl_size, args.steps, args.runs, loras=one)
        ratio = on.call_s / off.call_s
        on.note = f"rank 32 on every attention projection, weight 0.8; {ratio:.3f}× the time without it ({off.call_s:.3f} s)"
        results.throughput.append(on)
        results.other.append(Other("SDXL: one LoRA on / off (time per call, batch 1)", f"{ratio:.3f}×", on.peak_gib,
                                   f"it/s {_num(on.its, '.2f')} vs {_num(off.its, '.2f')}; PEFT adapters, gen_core.lora"))  # fmt: skip
        switches = sorted(switch_seconds(engine, [one, (LoraUse(files[1], 1.0, 1.0),), (*one, LoraUse(files[1], 0.5, 0.5))], 30))
        switch = switches[len(switches) // 2]
        results.other.append(Other("SDXL: switching LoRA sets between jobs / one render", f"{switch / off.call_s * 100:.2f} %",
                                   note=f"{switch * 1000:.1f} ms (activate with weights + disable, files loaded) vs "
                                        f"{off.call_s:.3f} s per render"))  # fmt: skip
        results.raw["sdxl_lora"] = {"on": dataclasses.asdict(on), "off": dataclasses.asdict(off), "switch_s": switches}
        del engine
        _free()


def section_compile(model_dir: Path, results: Results, budget: Budget, args) -> None:
    label = "torch.compile of the UNet: compile time (first call − steady call)"
    if args.skip_compile:
        results.other.append(Other(label, "—", note="skipped: --skip-compile"))
        results.throughput += [
            Throughput(COMPILED, b, note="skipped: --skip-compile") for b in args.compile_batches
        ]
        return
    if not budget.fits(args.compile_min_s):
        results.other.append(
            Other(
                label,
                "—",
                note=f"skipped: time budget ({budget.left():.0f} s left, needs ~{args.compile_min_s:.0f} s)",
            )
        )
        results.throughput += [
            Throughput(COMPILED, b, note="skipped: time budget") for b in args.compile_batches
        ]
        return
    engine = load_engine(model_dir, args.device, "fp16")
    kwargs: dict[str, Any] = {"backend": args.compile_backend}
    if args.compile_mode:
        kwargs["mode"] = args.compile_mode
    engine.unet.compile(**kwargs)  # in place, as EngineConfig.compile does
    how = f"backend={args.compile_backend}" + (f", mode={args.compile_mode}" if args.compile_mode else "")
    eager = {t.batch: t for t in results.throughput if t.config == FP16 and t.its}
    for i, batch in enumerate(args.compile_batches):
        if i and not budget.fits(args.compile_min_s):  # every new batch size recompiles
            results.throughput.append(Throughput(COMPILED, batch, note="skipped: time budget"))
            continue
        row = measure(engine, COMPILED, batch, args.size, args.steps, args.runs)
        compile_s = max(0.0, row.first_call_s - row.call_s)
        row.note = f"{how}; first call {row.first_call_s:.1f} s (compile ≈ {compile_s:.1f} s)"
        if batch in eager and row.its:
            row.note += f"; {row.its / eager[batch].its:.2f}× the uncompiled it/s"
        results.throughput.append(row)
        results.other.append(
            Other(
                f"{label}, batch {batch}",
                f"{compile_s:.1f} s",
                note=f"{how}; first call {row.first_call_s:.1f} s vs {row.call_s:.2f} s "
                "steady; a new batch size recompiles",
            )
        )
        log.warning("  compiled batch %d: %.2f it/s, compile %.1f s", batch, row.its or 0, compile_s)
    del engine
    _free()


# ----------------------------------------------------------------------------- report


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def environment(device: str) -> dict[str, str]:
    from bench.run import environment as bench_environment

    env = bench_environment()
    env["device"] = device
    if _is_cuda(device):
        props = torch.cuda.get_device_properties(torch.device(device))
        env["gpu"] = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
        )
        env["cuda / cudnn"] = f"{torch.version.cuda} / {torch.backends.cudnn.version()}"
        env["SDPA backends enabled"] = ", ".join(
            name for name, on in (
                ("flash", torch.backends.cuda.flash_sdp_enabled()),
                ("memory-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("cudnn", getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)()),
                ("math", torch.backends.cuda.math_sdp_enabled()),
            ) if on
        )  # fmt: skip
    env.pop("load average (1/5/15 min)", None)
    return env


def render(results: Results, args, env: dict[str, str]) -> str:
    info = results.info
    params = info.get("parameters", {})
    model = (
        "tiny random model (gen_core.tiny)"
        if args.tiny
        else "SD 1.5-sized random weights (bench.imagic builder)"
    )
    cmd = "python -m bench.gpu " + " ".join(info.get("argv", []))
    out = [
        "# GPU benchmark results" + (" (tiny smoke run)" if args.tiny else ""),
        "",
        f"`{cmd.strip()}` — {env['date']}, {info.get('total_s', 0):.0f} s in all"
        + (f", {len(results.errors)} section(s) failed" if results.errors else "")
        + ".",
        "",
        f"Model: {model}, diffusers layout, loaded with `Engine.load`; parameters "
        + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in params.items())
        + f". {args.size}×{args.size}, {args.steps} steps {SAMPLER}, CFG {CFG}, medians of {args.runs} run(s) after "
        "1 warm-up. it/s: denoising steps per second of one call (whole batch, CFG included); images/s: batch / "
        "whole `engine.generate` call (encode, sample, VAE decode one image at a time, PIL). Peak memory: "
        "`torch.cuda.max_memory_allocated`, weights included.",
        "",
        "## Sampling throughput",
        "",
        "| Configuration | Batch | it/s | images/s | s per call | Peak memory (GiB) | Notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in results.throughput:
        out.append(
            f"| {t.config} | {t.batch} | {_num(t.its, '.2f')} | {_num(t.images_per_s, '.3f')} | "
            f"{_num(t.call_s, '.3f')} | {_num(t.peak_gib, '.2f')} | {_cell(t.note)} |"
        )
    out += [
        "",
        "## Other measurements",
        "",
        "| Measurement | Value | Peak memory (GiB) | Notes |",
        "|---|---|---|---|",
    ]
    for o in results.other:
        out.append(
            f"| {_cell(o.measurement)} | {_cell(o.value)} | {_num(o.peak_gib, '.2f')} | {_cell(o.note)} |"
        )
    for name, error in results.errors.items():
        out.append(f"| {name} | failed | — | {_cell(error.strip().splitlines()[-1])} |")
    out += [
        "",
        "Reference (fal-ai/stable-diffusion-benchmarks, SD 1.5 on an A100, end to end): diffusers + SDPA ≈ 31 it/s, "
        "+ torch.compile + channels_last ≈ 47 it/s, TensorRT ≈ 61 it/s.",
        "",
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {k} | {_cell(v)} |" for k, v in env.items()]
    out += ["", "## Time per section", "", "| Section | Seconds |", "|---|---|"]
    out += [f"| {name} | {s:.1f} |" for name, s in results.sections_s.items()]
    raw = {"throughput": [dataclasses.asdict(t) for t in results.throughput], **results.raw}
    out += [
        "",
        "<details><summary>Raw results</summary>",
        "",
        "```json",
        json.dumps(raw, indent=2, default=str),
        "```",
        "",
        "</details>",
    ]
    for name, error in results.errors.items():
        out += [
            "",
            f"<details><summary>{name} (error)</summary>",
            "",
            "```",
            error.strip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main


def _batches(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give positive batch sizes, e.g. 1,4,8")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model at 64x64, a few seconds (CPU smoke run)"
    )
    parser.add_argument("--quick", action="store_true", help="half the steps and runs")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny when there is no GPU)")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"markdown table (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="where to write (or reuse) the random model; default: a temporary folder",
    )
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; 64 with --tiny)")
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default 20; 10 --quick; 3 --tiny)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="timed runs per point (default 3; 2 --quick; 1 --tiny)"
    )
    parser.add_argument("--batches", type=_batches, default=[1, 4, 8], help="batch sizes (default 1,4,8)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument(
        "--compile-backend", default=None, help="default inductor (eager for --tiny on the CPU)"
    )
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    parser.add_argument(
        "--compile-batches", type=_batches, default=[1], help="batch sizes compiled (default 1)"
    )
    parser.add_argument(
        "--skip-variants", action="store_true", help="leave out channels_last off / eager attention"
    )
    parser.add_argument("--skip-imagic", action="store_true")
    parser.add_argument(
        "--imagic-scale",
        type=float,
        default=None,
        help="scale the fast preset's optimisation steps (default 1; 0.04 with --tiny)",
    )
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for the whole run (default 560)")
    args = parser.parse_args(argv)

    forced = args.device is not None
    if not forced:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device != "cpu" and not _is_cuda(args.device):
        parser.error(f"unsupported device {args.device} (cuda, cuda:N or cpu)")
    if args.device == "cpu" and not args.tiny and not forced:
        parser.error(
            "no CUDA device: this benchmark is for a GPU (use --tiny for the CPU smoke run, "
            "or --device cpu to force the full-size model onto the CPU)"
        )
    quick = args.quick
    args.size = args.size or (64 if args.tiny else 512)
    args.steps = args.steps or (3 if args.tiny else 10 if quick else 20)
    args.runs = args.runs or (1 if args.tiny else 2 if quick else 3)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (it/s is timed from the end of step 1)")
    args.compile_backend = args.compile_backend or (
        "eager" if args.tiny and not _is_cuda(args.device) else "inductor"
    )
    args.imagic_steps = 3 if args.tiny else 20
    if args.imagic_scale is None:
        args.imagic_scale = 0.04 if args.tiny else 1.0  # tiny: 2 + 4 optimisation steps
    args.batch_requests = 4
    # Seconds a section needs at least to start (full-size on an H100); reserve kept for what follows.
    small = args.tiny or not _is_cuda(args.device)
    args.reserve = 0.0 if small else 20.0
    args.imagic_min_s = 0.0 if small else 45.0
    args.batching_min_s = 0.0 if small else 30.0
    args.hypernetwork_min_s = 0.0 if small else 30.0
    args.sdxl_min_s = 0.0 if small else 150.0
    args.sdxl_size = 64 if args.tiny else 1024
    args.compile_min_s = 0.0 if small else 120.0
    return args


SECTIONS: dict[str, Callable[[Path, Results, Budget, argparse.Namespace], None]] = {
    "fp16 (sweep, channels_last, attention, Imagic)": section_fp16,
    "bf16 (sweep)": section_bf16,
    "batching": section_batching,
    "hypernetwork": section_hypernetwork,
    "SDXL (sweep, LoRA)": section_sdxl,
    "torch.compile": section_compile,
}


def run(argv: list[str] | None = None) -> tuple[Results, str, argparse.Namespace]:
    args = parse_args(argv)
    budget = Budget(args.budget)
    results = Results()
    results.info["argv"] = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        model_dir = args.model_dir or Path(tmp) / ("tiny" if args.tiny else "sd15-sized-random")
        started = time.perf_counter()
        log.warning("building the %s model in %s ...", "tiny" if args.tiny else "SD 1.5-sized", model_dir)
        sizes, built = ensure_model(model_dir, args.tiny, args.device)
        results.info["parameters"] = sizes
        results.sections_s["model build + save" if built else "model (reused)"] = (
            time.perf_counter() - started
        )
        results.other.insert(
            0,
            Other(
                "Random model build + save (fp16 safetensors)" if built else "Model reused",
                f"{time.perf_counter() - started:.1f} s",
                note=str(model_dir),
            ),
        )
        for name, section in SECTIONS.items():
            log.warning("== %s (%.0f s left of the budget)", name, budget.left())
            t0 = time.perf_counter()
            try:
                section(model_dir, results, budget, args)
            except Exception:
                results.errors[name] = traceback.format_exc()
                log.error("%s failed:\n%s", name, results.errors[name])
            finally:
                _free()
            results.sections_s[name] = time.perf_counter() - t0
    results.info["total_s"] = budget.elapsed()
    text = render(results, args, environment(args.device))
    return results, text, args


def main(argv: list[str] | None = None) -> int:
    from diffusers.utils import logging as diffusers_logging

    verbosity, bars = diffusers_logging.get_verbosity(), diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()  # "fp16 pipeline on cpu" and similar notices (--tiny)
    diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="invalid value encountered", category=RuntimeWarning
            )  # NaN
            results, text, args = run(argv)
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bars:
            diffusers_logging.enable_progress_bar()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if results.errors else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    sys.exit(main())
