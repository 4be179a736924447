"""Run every benchmark with small settings and write ``bench/RESULTS.md``.

    python -m bench [--only NAME ...] [--quick] [--threads N] [--output PATH]

Benchmarks: engine_overhead, prompt_encoding, storage_queue, batching, bot_e2e, mix, imagic, hypernet, lora, semantics,
crash_recovery, img2img, queue_scale, remote_worker (each also runs alone as ``python -m bench.NAME``; the
last two on the PostgreSQL server at 127.0.0.1:5432).  They run one after another in this process on one tiny model
built once; a benchmark that fails is reported as such and the others still run.  The results file
has one row per measurement with its target and pass/miss, the machine and the versions, and
every benchmark's full result dict.  The exit status is 1 if a benchmark failed to run (a missed
target is a result, not a failure).

The GPU measurement of the real (SD 1.5-sized) architecture is separate: ``python -m bench.gpu``
writes ``bench/GPU_RESULTS.md`` (see bench/gpu.py; ``--tiny`` is its CPU smoke run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCHMARKS = (
    "engine_overhead", "prompt_encoding", "storage_queue", "batching", "bot_e2e", "mix", "imagic", "hypernet", "lora",
    "semantics", "crash_recovery", "img2img", "queue_scale", "remote_worker",
)  # fmt: skip
DEFAULT_OUTPUT = Path(__file__).with_name("RESULTS.md")

# Settings per benchmark: normal (`python -m bench`) and --quick.  Both are far smaller than the
# benchmarks' own defaults so that the whole run stays within a few minutes on two CPU cores.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "engine_overhead": {
        "normal": {"size": 512, "steps": 20, "runs": 5, "warmup": 1},
        "quick": {"size": 256, "steps": 10, "runs": 3, "warmup": 1},
    },
    "prompt_encoding": {
        "normal": {"runs": 20, "warmup": 2},
        "quick": {"runs": 8, "warmup": 1},
    },
    "storage_queue": {
        "normal": {"n_jobs": 1000},
        "quick": {"n_jobs": 300},
    },
    "batching": {
        "normal": {"size": 512, "steps": 20, "runs": 5},
        "quick": {"size": 512, "steps": 10, "runs": 3, "stage_split": False},
    },
    "mix": {
        "normal": {"size": 256, "steps": 10, "runs": 5},
        "quick": {"size": 128, "steps": 10, "runs": 3},
    },
    "hypernet": {
        "normal": {"size": 256, "steps": 10, "runs": 5},
        "quick": {"size": 128, "steps": 10, "runs": 3},
    },
    "lora": {
        "normal": {"size": 256, "steps": 10, "runs": 5},
        "quick": {"size": 128, "steps": 10, "runs": 3},
    },
    "imagic": {
        "normal": {"size": 128, "steps": 20, "quality_scale": 0.2},
        "quick": {"size": 64, "steps": 10, "quality_scale": 0.1},
    },
    "semantics": {
        "normal": {"prompts": 50, "seeds": 2, "steps": 20},
        "quick": {"prompts": 12, "seeds": 1, "steps": 20},
    },
    "img2img": {
        "normal": {"size": 256, "steps": 20, "runs": 5},
        "quick": {"size": 128, "steps": 20, "runs": 3},
    },
    "queue_scale": {
        "normal": {"jobs": 240},
        "quick": {"jobs": 120},
    },
    "remote_worker": {
        "normal": {"runs": 10},
        "quick": {"runs": 4},
    },
    "crash_recovery": {
        "normal": {"rounds": 3, "jobs": 3, "n_jobs": 200, "n_members": 20, "kills": 5, "beats": 200},
        "quick": {"rounds": 2, "jobs": 3, "n_jobs": 60, "n_members": 10, "kills": 3, "beats": 100},
    },
    "bot_e2e": {
        "normal": {"size": 512, "steps": 20, "runs": 5, "n_jobs": 200, "n_users": 20, "busy_steps": 150},
        "quick": {"size": 512, "steps": 10, "runs": 3, "n_jobs": 200, "n_users": 20, "busy_steps": 100},
    },
}


@dataclass
class Row:
    bench: str
    measurement: str
    value: str
    target: str = "—"
    verdict: str = "info"  # pass | miss | info
    note: str = ""


def _check(ok: bool) -> str:
    return "pass" if ok else "miss"


def _spread(values: list[float], unit: str = "s") -> str:
    if not values:
        return ""
    scale = 1000 if unit == "ms" else 1
    return f"runs {min(values) * scale:.3g}–{max(values) * scale:.3g} {unit}"


# ----------------------------------------------------------------------------- rows per benchmark


def rows_engine_overhead(r: dict[str, Any]) -> list[Row]:
    note = f"{r['size']}, {r['steps']} steps, {r['sampler']}; medians of {r['runs']} interleaved runs"
    return [
        Row("engine_overhead", "engine.generate / bare diffusers call", f"{r['ratio_engine_over_bare']:.3f}×",
            "≤ 1.05×", _check(r["ratio_engine_over_bare"] <= 1.05),
            f"{note}; {r['median_s_engine'] * 1000:.0f} vs {r['median_s_bare'] * 1000:.0f} ms; "
            f"identical pixels: {r['identical_pixels']}"),
        Row("engine_overhead", "… with progress callback + previews every 5 steps",
            f"{r['ratio_engine_progress_over_bare']:.3f}×", "≤ 1.05×",
            _check(r["ratio_engine_progress_over_bare"] <= 1.05),
            f"{r['median_s_engine_progress'] * 1000:.0f} ms"),
    ]


def rows_prompt_encoding(r: dict[str, Any]) -> list[Row]:
    return [
        Row("prompt_encoding", f"encode {r['tokens_long']}-token prompt with emphasis ({r['chunks_long']} chunks)",
            f"{r['median_ms_225_emphasis']:.2f} ms", note=f"medians of {r['runs']} interleaved runs"),
        Row("prompt_encoding", f"encode {r['tokens_short']}-token prompt (1 chunk)", f"{r['median_ms_75']:.2f} ms"),
        Row("prompt_encoding", "225-token / 75-token", f"{r['ratio_225_over_75']:.2f}×",
            note="3 chunks in one encoder pass; no target set for this benchmark"),
        Row("prompt_encoding", "225 tokens, one encoder pass per chunk (comparison)",
            f"{r['median_ms_225_one_pass_per_chunk']:.2f} ms",
            note=f"tokenizing alone: {r['median_ms_225_tokenize_only']:.2f} ms"),
    ]


def rows_storage_queue(r: dict[str, Any]) -> list[Row]:
    ok = r["jobs_per_s"] >= 500 and not r["ledger_problems"] and r["done"] == r["jobs"]
    return [
        Row("storage_queue", "enqueue + claim + complete throughput (SQLite)", f"{r['jobs_per_s']:.0f} jobs/s",
            "≥ 500 jobs/s", _check(ok),
            f"{r['jobs']} jobs, {r['producers']} producers, batches of ≤ {r['max_batch']} "
            f"(mean {r['mean_batch']}), {r['path']}; ledger problems: {r['ledger_problems']}"),
        Row("storage_queue", "enqueue latency p50 / p99", f"{r['enqueue_p50_ms']:.2f} / {r['enqueue_p99_ms']:.2f} ms",
            note="under 8 concurrent producers + the consumer"),
    ]


def rows_batching(r: dict[str, Any]) -> list[Row]:
    rows = [
        Row("batching", f"{r['requests']} requests: generate_batch vs {r['requests']}× generate (throughput)",
            f"{r['throughput_ratio']:.2f}×", f"≥ {r['target_ratio']}×", _check(r["throughput_ratio"] >= r["target_ratio"]),
            f"{r['size']}, {r['steps']} steps, {r['unet_batches']} UNet batch(es); "
            f"{r['images_per_s_batched']:.2f} vs {r['images_per_s_sequential']:.2f} img/s; medians of {r['runs']} "
            f"interleaved runs ({_spread(r['all_s']['batched'])} batched, {_spread(r['all_s']['sequential'])} one by one); "
            f"max pixel difference {r['max_pixel_diff']}/255"),
    ]
    stages = r.get("stages")
    if stages:
        rows.append(Row(
            "batching", "UNet forward, 8 rows (4 images + CFG) / 2 rows (1 image)", f"{stages['unet_rows8_over_rows2']:.2f}×",
            note=f"{stages['unet_forward_ms_rows8']:.0f} vs {stages['unet_forward_ms_rows2']:.0f} ms "
                 f"(4.0× = no gain from batching); VAE decode {stages['vae_decode_ms_1']:.0f} ms/image, never batched",
        ))
    return rows


def rows_bot_e2e(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    a = r.get("overhead")
    if a:
        rows += [
            Row("bot_e2e", "generation inside the bot / bare engine.generate", f"{a['ratio_generation_over_bare']:.3f}×",
                f"≤ {a['target_generation_ratio']}×", _check(a["ratio_generation_over_bare"] <= a["target_generation_ratio"]),
                f"/imagine {a['size']}, {a['steps']} steps, fixed seed; worker's engine call (progress + previews every "
                f"5 steps) {a['median_s_bot_generation'] * 1000:.0f} ms vs {a['median_s_bare_generate'] * 1000:.0f} ms; "
                f"medians of {a['runs']} interleaved runs; identical pixels: {a['identical_pixels']}"),
            Row("bot_e2e", "end to end (invoke → result message) / bare engine.generate",
                f"{a['ratio_end_to_end_over_bare']:.3f}×",
                note=f"{a['median_s_end_to_end'] * 1000:.0f} ms end to end ({_spread(a['all_s']['end_to_end'])})"),
            Row("bot_e2e", "fixed overhead (end to end − generation)", f"{a['fixed_overhead_ms']:.0f} ms",
                note=f"invoke → engine call {a['median_ms_invoke_to_generation']:.0f} ms, engine call → result posted "
                     f"{a['median_ms_generation_to_result']:.0f} ms; ack {a['median_ms_ack']:.1f} ms; "
                     f"emulator failures: {a['emulator_failures']}"),
        ]
    for key, label in (("ack_load", "paced"), ("ack_burst", "burst")):
        b = r.get(key)
        if not b:
            continue
        how = (f"{b['jobs']} invokes {b['invoke_interval_s'] * 1000:.0f} ms apart ({b['invoke_phase_s']:.1f} s)"
               if b["invoke_interval_s"] > 0 else f"{b['jobs']} invokes at once")
        ok = b["acked"] == b["jobs"] and b["ack_p99_ms"] < b["target_ack_p99_ms"]
        rows += [
            Row("bot_e2e", f"ack latency under load, {label}: p99", f"{b['ack_p99_ms']:.1f} ms",
                f"< {b['target_ack_p99_ms']:.0f} ms", _check(ok),
                f"{how} from {b['users']} users while the worker generates ({b['busy_job']}; busy throughout: "
                f"{b['worker_busy_whole_invoke_phase']}); {b['acked']}/{b['jobs']} acked; "
                f"failures: {b['interaction_failures']}"),
            Row("bot_e2e", f"ack latency under load, {label}: p50", f"{b['ack_p50_ms']:.1f} ms",
                note=f"p90 {b['ack_p90_ms']:.1f} ms, max {b['ack_max_ms']} ms"),
            Row("bot_e2e", f"'queued' notice under load, {label}: p50 / p99",
                f"{b['queued_notice_p50_ms']:.0f} / {b['queued_notice_p99_ms']:.0f} ms",
                note=f"{b['queued_after']} jobs queued afterwards"),
        ]
    return rows


def rows_mix(r: dict[str, Any]) -> list[Row]:
    where = f"{r['size']}, {r['steps']} steps, medians of {r['runs']} interleaved runs"
    return [
        Row("mix", "one-prompt mix (own loop) / engine.generate (diffusers pipeline)", f"{r['loop_over_pipeline']:.3f}×",
            note=f"{where}; identical pixels: {r['identical_pixels']}"),
        Row("mix", "composable / blend, two prompts", f"{r['composable_over_blend']:.3f}×",
            note="3 vs 2 UNet evaluations per step"),
        Row("mix", "sweep grid (one batch of 5) / five separate renders", f"{r['sweep_over_five_renders']:.3f}×", note=where),
    ]


def rows_imagic(r: dict[str, Any]) -> list[Row]:
    where = f"{r['size']}, {r['steps']} steps, {r['device']} {r['dtype']}, model {r['model']}"
    return [
        Row("imagic", f"/edit fast ({r['fast_steps'][0]} + {r['fast_steps'][1]} steps) / img2img",
            f"{r['ratio_fast_over_img2img']:.1f}×", "≤ 10×", _check(r["fast_target_met"]),
            f"{where}; η=0 PSNR {r['fast_psnr_eta0']:.2f} dB vs img2img {r['img2img_psnr']:.2f} dB"),
        Row("imagic", f"/edit quality ({r['quality_steps'][0]} + {r['quality_steps'][1]} steps) / img2img",
            f"{r['ratio_quality_over_img2img']:.1f}×", note=f"η=0 PSNR {r['quality_psnr_eta0']:.2f} dB"),
        Row("imagic", "re-mix (η button) / img2img", f"{r['ratio_remix_over_img2img']:.2f}×",
            note="one sampling pass with the kept adapters, no optimisation"),
    ]


def rows_hypernet(r: dict[str, Any]) -> list[Row]:
    where = f"{r['size']}, {r['steps']} steps, medians of {r['runs']} interleaved runs, {r['device']} {r['dtype']}"
    return [
        Row("hypernet", "one module on / off", f"{r['ratio_one_over_off']:.3f}×",
            note=f"{where}; the module changes the image: {r['changes_image']}"),
        Row("hypernet", "two chained modules on / off", f"{r['ratio_two_over_off']:.3f}×", note=where),
        Row("hypernet", "switching modules (attach + detach) / one render", f"{r['switch_over_render'] * 100:.3f} %",
            note=f"{r['switch_ms_median']:.2f} ms; plain output identical afterwards: {r['off_identical_after']}"),
    ]


def rows_lora(r: dict[str, Any]) -> list[Row]:
    where = f"{r['size']}, {r['steps']} steps, rank {r['rank']}, medians of {r['runs']} interleaved runs, {r['device']} {r['dtype']}"
    return [
        Row("lora", "one LoRA on / off", f"{r['ratio_one_over_off']:.3f}×", note=f"{where}; the LoRA changes the image: {r['changes_image']}"),
        Row("lora", "three LoRAs on / off", f"{r['ratio_three_over_off']:.3f}×", note=where),
        Row("lora", "switching LoRA sets (activate + disable, files loaded) / one render", f"{r['switch_over_render'] * 100:.2f} %",
            note=f"{r['switch_ms_median']:.2f} ms; first use of a file {r['first_load_ms']:.0f} ms; plain output identical "
                 f"afterwards: {r['off_identical_after']}"),
    ]  # fmt: skip


def rows_semantics(r: dict[str, Any]) -> list[Row]:
    toy, chance = r["toy"], r["chance"]
    where = f"{r['prompts']} held-out prompts × {r['seeds']} seeds, {r['steps']} steps"
    rows = []
    for key, label in (("cfg7_clip2", "prompt following (CFG 7, clip skip 2)"), ("cfg1", "CFG 1"),
                       ("clip_skip1", "clip skip 1"), ("third_chunk", "colours in the third 75-token chunk")):
        for attribute, value in toy[key].items():
            target = "≥ 0.90" if key == "cfg7_clip2" else "—"
            verdict = _check(value >= 0.9) if key == "cfg7_clip2" else "info"
            rows.append(Row("semantics", f"{label}: {attribute}", f"{value:.2f}", target, verdict,
                            f"chance {chance[attribute]:.2f}; {where}"))
    for attribute, value in r["random_tiny"]["cfg7_clip2"].items():
        rows.append(Row("semantics", f"random tiny model (baseline): {attribute}", f"{value:.2f}",
                        note=f"chance {chance[attribute]:.2f}"))
    for key, label in (("judge_on_ground_truth", "judge on the generator's pictures"),
                       ("judge_on_vae_round_trip", "judge on the VAE's round trip (ceiling)")):
        rows.append(Row("semantics", label, ", ".join(f"{a} {v:.2f}" for a, v in toy[key].items())))
    without, negative = toy["red_share_without_with_negative"]
    rows.append(Row("semantics", "red's share without / with negative \"red\"", f"{without:.3f} / {negative:.3f}",
                    "≤ 0.7× with", _check(negative <= 0.7 * without)))
    low, high = toy["red_share_emphasis_0.6_1.4"]
    rows.append(Row("semantics", "red's share at (red:0.6) / (red:1.4)", f"{low:.3f} / {high:.3f}",
                    "+0.05 at 1.4", _check(high >= low + 0.05)))
    redness = list(toy["mix_redness_by_weight"].values())
    rows.append(Row("semantics", "blend red:w | blue:1-w, object's red − blue at w = 0…1", " / ".join(f"{v:.0f}" for v in redness),
                    "monotonic", _check(all(a <= b for a, b in zip(redness, redness[1:], strict=False)))))
    green, red = toy["inpaint_green_red_in_mask"]
    rows.append(Row("semantics", "inpaint \"a green square\" over a red circle: green / red share in the mask",
                    f"{green:.2f} / {red:.2f}", "green > 0.5, red < 0.05", _check(green > 0.5 and red < 0.05)))
    by_strength = toy["img2img_by_strength"]
    rows.append(Row("semantics", "img2img red circle → \"a blue circle\": still red / blue at strength " + ", ".join(by_strength),
                    " · ".join(f"{v['red']:.2f}/{v['blue']:.2f}" for v in by_strength.values()),
                    "red at 0.2, blue at 0.8", _check(by_strength["0.2"]["red"] >= 0.5 and by_strength["0.8"]["blue"] >= 0.5)))
    ngms = toy["img2img_ngms_0.5"]
    rows.append(Row("semantics", "the same with guidance_min_sigma 0.5: still red / blue at strength " + ", ".join(ngms),
                    " · ".join(f"{v['red']:.2f}/{v['blue']:.2f}" for v in ngms.values()), "red at 0.2",
                    _check(ngms["0.2"]["red"] >= 0.5),
                    "held-out prompts with it: " + " / ".join(f"{v:.2f}" for v in toy["ngms_0.5"].values())))
    quiet, noisy = by_strength["0.3"]["spread"], toy["img2img_noise_1_at_0.3"]["0.3"]["spread"]
    rows.append(Row("semantics", "img2img per-seed spread without / with noise 1", f"{quiet:.2f} / {noisy:.2f}",
                    "≥ 1.2× with noise", _check(noisy >= 1.2 * quiet), "pixel units, strength 0.3"))
    subtle, strong = toy["vary_distance_subtle_strong"].items()
    rows.append(Row("semantics", f"Vary: distance from the picture at strength {subtle[0]} (Subtle) / {strong[0]} (Strong)",
                    f"{subtle[1]:.2f} / {strong[1]:.2f}", "further when Strong", _check(strong[1] > subtle[1]),
                    "pixel units, a fresh seed per variation"))  # fmt: skip
    plain, styled = toy["hypernet_stripes_off_on"]
    rows.append(Row("semantics", "stripe score without / with a hypernetwork trained on 16 striped pictures",
                    f"{plain:.3f} / {styled:.3f}", "higher with", _check(styled > plain + 0.03)))
    return rows


def rows_crash_recovery(r: dict[str, Any]) -> list[Row]:
    rec, soak, beat = r["recovery"], r["soak"], r["heartbeat"]
    return [
        Row("crash_recovery", "kill -9 mid-sampling: restart → last answer (worst of runs)", f"{rec['recovery_max_s']:.1f} s",
            "≤ 60 s", _check(rec["recovery_max_s"] <= 60 and not rec["problems"]),
            f"median {rec['recovery_median_s']:.1f} s over {rec['rounds']} rounds of {rec['jobs']} jobs; a start (fork → "
            f"logged in) takes {rec['start_median_s']:.1f} s of it; problems: {rec['problems']}"),
        Row("crash_recovery", f"soak: {soak['n_jobs']} jobs, {soak['n_members']} members, {soak['kills']} kill -9",
            f"{len(soak['problems'])} problems", "0 lost, 0 duplicated", _check(not soak["problems"]),
            f"{soak['accepted']} accepted, {soak['statuses']}; {soak['refused']} refused ({soak['refusals']}), "
            f"{soak['not_accepted']} neither accepted nor refused; {soak['wall_s']} s"),
        Row("crash_recovery", "heartbeat: one beat / time between beats", f"{beat['share_of_throughput'] * 100:.3f} %",
            "≤ 1 %", _check(beat["share_of_throughput"] <= 0.01),
            f"{beat['beat_median_ms']} ms (p99 {beat['beat_p99_ms']} ms) every {beat['interval_s']} s "
            f"(lease {beat['lease_s']} s), {beat['running_jobs']} running jobs"),
    ]  # fmt: skip


def rows_img2img(r: dict[str, Any]) -> list[Row]:
    return [
        Row("img2img", f"img2img at strength {s} / txt2img", f"{ratio:.3f}×", f"≈ {s}",
            note=f"{r['size']}, {r['steps']} steps, medians of {r['runs']} interleaved runs")
        for s, ratio in r["ratio_to_txt2img"].items()
    ]


def rows_queue_scale(r: dict[str, Any]) -> list[Row]:
    rows = [
        Row("queue_scale", f"{s['workers']} worker processes (PostgreSQL): jobs/s, × one worker",
            f"{s['jobs_per_s']:.1f}/s, {s['speedup']:.1f}×", "≥ 12× at 16" if s["workers"] == 16 else "—",
            _check(s["speedup"] >= 12) if s["workers"] == 16 else "info",
            f"{s['jobs']} jobs of {r['gpu_s'] * 1000:.0f} ms simulated GPU time; claim p50 {s['claim_p50_ms']:.1f} ms, "
            f"p99 {s['claim_p99_ms']:.1f} ms")
        for s in r["scale"]
    ]  # fmt: skip
    kill = r["kill_9"]["recovered_s"]
    rows.append(Row("queue_scale", "kill -9 of one of 4 workers mid-batch → its job done by another",
                    f"{kill:.2f} s" if kill is not None else "no job held", note=f"lease {r['lease_s']} s"))  # fmt: skip
    return rows


def rows_remote_worker(r: dict[str, Any]) -> list[Row]:
    here, there = r["embedded"], r["remote"]
    return [
        Row("remote_worker", "/imagine end to end: remote worker process / embedded worker",
            f"{r['remote_over_embedded']:.2f}× ({r['extra_ms']:+.0f} ms)",
            note=f"toy-world 64 px, {r['steps']} steps, medians of {r['runs']} alternating runs on PostgreSQL; "
                 f"embedded {here['e2e_ms']:.0f} ms (claim {here['to_claim_ms']:.0f}, post {here['to_post_ms']:.0f}), "
                 f"remote {there['e2e_ms']:.0f} ms (claim {there['to_claim_ms']:.0f}, post {there['to_post_ms']:.0f})"),
    ]  # fmt: skip


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "engine_overhead": rows_engine_overhead,
    "prompt_encoding": rows_prompt_encoding,
    "storage_queue": rows_storage_queue,
    "batching": rows_batching,
    "bot_e2e": rows_bot_e2e,
    "mix": rows_mix,
    "imagic": rows_imagic,
    "hypernet": rows_hypernet,
    "lora": rows_lora,
    "semantics": rows_semantics,
    "crash_recovery": rows_crash_recovery,
    "img2img": rows_img2img,
    "queue_scale": rows_queue_scale,
    "remote_worker": rows_remote_worker,
}


# ----------------------------------------------------------------------------- running


def run_one(name: str, settings: dict[str, Any], model_dir: Path, threads: int | None) -> dict[str, Any]:
    import importlib

    module = importlib.import_module(f"bench.{name}")
    kwargs = dict(settings)
    if name in ("engine_overhead", "prompt_encoding", "batching", "bot_e2e", "mix", "imagic", "hypernet", "lora", "semantics",
                "crash_recovery", "img2img"):
        kwargs["model_dir"] = model_dir
    if name in ("batching", "bot_e2e", "mix") and threads:
        kwargs["threads"] = threads
    return module.run(**kwargs)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def environment(load_before: str = "") -> dict[str, str]:
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical CPUs ({affinity} usable)",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
        "torch threads": str(torch.get_num_threads()),
        "load average (1/5/15 min)": f"before the run {load_before}; after {_loadavg()} "
                                     "(other processes on the machine add noise)",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "discord.py": _version("discord.py"),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[Row], results: dict[str, Any], errors: dict[str, str], env: dict[str, str],
           mode: str, seconds: dict[str, float]) -> str:
    passed = sum(r.verdict == "pass" for r in rows)
    missed = sum(r.verdict == "miss" for r in rows)
    out = [
        "# Benchmark results",
        "",
        f"`python -m bench{' --quick' if mode == 'quick' else ''}` — {env['date']}. "
        f"{passed} targets met, {missed} missed"
        + (f", {len(errors)} benchmark(s) failed to run" if errors else "") + ".",
        "",
        "The timings run on the tiny offline model (random weights, SD 1.x layout) and `semantics` and "
        "`remote_worker` on the toy-world model, so absolute times say little about a real checkpoint; the ratios "
        "compare two ways of doing the same work on the same machine, measured interleaved (medians).",
        "",
        "| Benchmark | Measurement | Value | Target | Result | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = {"pass": "✅ pass", "miss": "❌ miss", "info": "info"}[r.verdict]
        out.append(f"| {r.bench} | {_cell(r.measurement)} | {_cell(r.value)} | {_cell(r.target)} | {verdict} | {_cell(r.note)} |")
    for name, error in errors.items():
        out.append(f"| {name} | failed to run | — | — | ❌ error | {_cell(error.strip().splitlines()[-1])} |")
    out += ["", "## Machine and versions", "", "| | |", "|---|---|"]
    out += [f"| {k} | {_cell(v)} |" for k, v in env.items()]
    out += ["", "## Settings and time taken", "", "| Benchmark | Settings | Seconds |", "|---|---|---|"]
    for name in seconds:
        settings = ", ".join(f"{k}={v}" for k, v in SETTINGS[name][mode].items())
        out.append(f"| {name} | {settings} | {seconds[name]:.0f} |")
    out += ["", "## Raw results", ""]
    for name, result in results.items():
        out += [f"<details><summary>{name}</summary>", "", "```json", json.dumps(result, indent=2), "```", "", "</details>", ""]
    for name, error in errors.items():
        out += [f"<details><summary>{name} (error)</summary>", "", "```", error.strip(), "```", "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="even smaller settings (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"results file (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--model-dir", type=Path, default=None, help="existing/created tiny model directory")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from gen_core.tiny import ensure_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "normal"
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    rows: list[Row] = []
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        model_dir = ensure_tiny_model(args.model_dir or Path(tmp) / "tiny")
        for name in names:
            print(f"== {name} ({mode}) ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = run_one(name, SETTINGS[name][mode], model_dir, args.threads)
                rows += ROWS[name](results[name])
            except Exception:
                errors[name] = traceback.format_exc()
                print(errors[name], file=sys.stderr)
            seconds[name] = time.perf_counter() - t0
            print(f"   {name} took {seconds[name]:.0f} s", file=sys.stderr, flush=True)

    text = render(rows, results, errors, environment(load_before), mode, seconds)
    args.output.write_text(text, encoding="utf-8")
    width = max((len(r.measurement) for r in rows), default=10)
    for r in rows:
        print(f"{r.bench:<16} {r.measurement:<{width}}  {r.value:>18}  {r.target:>14}  {r.verdict}")
    for name in errors:
        print(f"{name:<16} FAILED (see {args.output})")
    print(f"wrote {args.output}")
    return 1 if errors else 0
