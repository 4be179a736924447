"""The real bot end to end: /imagine through the Discord emulator, and acknowledgements under load.

Both parts run the unmodified bot (``bot.DiffusionBot`` with its cogs, worker, SQLite database and
the tiny model) against the in-process Discord emulator, through ``emulated_bot.BotEnv``.
The bot runs with the production worker settings (previews every 5 steps, a progress edit at most
every 3 s), not the test fixture's speed-ups.

(a) overhead: one /imagine (512x512, 20 steps, fixed seed) from the invoke to the posted result
    message, vs a bare ``engine.generate`` of the same request (the job's stored parameters, same
    engine object), interleaved, medians.  Reported: end-to-end / bare, the generation part inside
    the bot (the worker's engine call, with its progress callbacks and previews) / bare -- the
    ratio with the <= 1.05 target -- and the fixed overhead in ms (end to end minus the generation
    part: interaction handling, enqueue, claim, PNG encoding, image store, settlement, upload).
(b) acknowledgement under load: the worker is kept busy with a long job (512x512, many steps,
    4 images) while ~20 users invoke 200 /imagine; for each, the time from the invoke to the
    interaction's initial response (the emulator's own timestamps; ``it.wait_acked`` confirms it)
    and to the "queued" notice (the deferred response filled in).  p50/p99, target p99 < 0.5 s.

The emulator runs in the same process and event loop as the bot, so its own work (HTTP server,
gateway) is counted as well -- as Discord's network latency would be in production.

    python -m bench.bot_e2e [--runs 5] [--size 512] [--steps 20] [--jobs 200] [--users 20]
                            [--interval 0.02] [--busy-steps 150] [--threads N] [--model-dir DIR]

``run(...)`` returns a dict for a bench runner; ``run_overhead`` / ``run_ack_load`` each part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "a cat sitting on a wooden chair, soft light, detailed fur"
TARGET_GEN_RATIO = 1.05
TARGET_ACK_P99_S = 0.5
# Production worker settings (services.config.WorkerConfig defaults), not the tests' fast ones.
WORKER = {"progress_interval_s": 3.0, "poll_interval_s": 0.5, "preview_every": 5}


class TimedEngine:
    """The bot's engine behind a stopwatch: times every ``generate_batch`` the worker makes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.calls: list[tuple[int, float]] = []  # (requests, seconds)
        self.wall: list[tuple[float, float]] = []  # (start, end) in time.time()
        self.active = threading.Event()
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate_batch(self, requests, **kwargs):
        self.started += 1
        self.active.set()
        w0, t0 = time.time(), time.perf_counter()
        try:
            return self.engine.generate_batch(requests, **kwargs)
        finally:
            self.calls.append((len(requests), time.perf_counter() - t0))
            self.wall.append((w0, time.time()))
            self.active.clear()


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, int(np.ceil(q / 100 * len(ordered))) - 1))
    return ordered[k]


@contextlib.asynccontextmanager
async def _bot(data_dir: Path, model_dir: Path, n_users: int = 0, **sections: dict[str, Any]):
    """A started emulator (+ ``n_users`` extra guild members) and the real bot; stopped cleanly."""
    from discord_emulator import Emulator, EmulatorSettings, configure_discord_py
    from emulated_bot import BotEnv, bot_config

    emu = Emulator(EmulatorSettings())
    await emu.start()
    previous = configure_discord_py(emu.api_base, emu.gateway_url)
    guild = emu.guild()
    users = []
    for i in range(n_users):
        user = emu.add_user(f"bench{i:02d}")
        emu.add_member(guild, user)
        users.append(user)
    merged: dict[str, dict[str, Any]] = {
        "worker": dict(WORKER),
        "generation": {"max_area": 512 * 768, "default_steps": 28, "default_aspect": "portrait"},
        "limits": {"max_queued_per_user": 10_000, "max_steps": 150},
        "credits": {"start_balance": 10**9},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    env = BotEnv(emu, bot_config(emu, data_dir, model_dir, **merged))
    try:
        await env.start()
        timed = TimedEngine(env.services.worker.engine)
        env.services.worker.engine = timed
        yield env, timed, users
    finally:
        try:
            await env.stop()
        finally:
            await emu.stop()
            configure_discord_py(*previous)


# ----------------------------------------------------------------------------- (a) overhead


async def _overhead(
    data_dir: Path, model_dir: Path, size: int, steps: int, runs: int, warmup: int, seed: int
) -> dict[str, Any]:
    from PIL import Image

    from emulated_bot import is_result, result_job_id
    from worker.handlers import sampling_request
    from worker.jobs import params_of

    async with _bot(data_dir, model_dir) as (env, timed, _users):
        emu = env.emu
        alice, channel = emu.user("alice"), emu.guild().channel("general")
        engine = timed.engine
        options = {"prompt": PROMPT, "aspect": f"{size}x{size}", "steps": steps, "seed": seed}
        request = None
        result_pixels = None

        async def through_bot() -> dict[str, float]:
            nonlocal request, result_pixels
            before = len(timed.calls)
            t0, w0 = time.perf_counter(), time.time()
            it = await emu.invoke(alice, channel, "imagine", options)
            await it.wait_acked(5)
            msg = await emu.wait_for_message(channel, is_result, timeout=120)
            t1 = time.perf_counter()
            status = it.original_message
            await emu.wait_until(lambda: status is None or status.deleted, 10, "the status message to go")
            if request is None:
                job = await env.services.queue.get(result_job_id(msg))
                request = sampling_request(params_of(job))
                data = await emu.read_attachment(msg.attachments[0])
                result_pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            assert len(timed.calls) == before + 1, "expected exactly one engine call per /imagine"
            return {
                "e2e": t1 - t0,
                "e2e_server": msg.created_at - w0,  # emulator's clock: invoke -> result message created
                "gen": timed.calls[-1][1],
                "before_gen": timed.wall[-1][0] - w0,  # invoke -> engine call starts
                "after_gen": msg.created_at - timed.wall[-1][1],  # engine call returns -> result posted
                "ack": it.acked_at - it.created_at,
            }

        def bare() -> float:
            t0 = time.perf_counter()
            engine.generate(request)
            return time.perf_counter() - t0

        await through_bot()  # first job: fills in `request`
        bare_pixels = np.asarray(engine.generate(request).images[0].image)
        identical = result_pixels is not None and np.array_equal(bare_pixels, result_pixels)
        for _ in range(warmup - 1):
            await through_bot()
            bare()

        bot_runs: list[dict[str, float]] = []
        bare_runs: list[float] = []
        for i in range(runs):
            if i % 2 == 0:
                bot_runs.append(await through_bot())
                bare_runs.append(bare())
            else:
                bare_runs.append(bare())
                bot_runs.append(await through_bot())
        failures = len(emu.failures)

    med = {k: statistics.median(r[k] for r in bot_runs) for k in bot_runs[0]}
    med_bare = statistics.median(bare_runs)
    fixed = statistics.median(r["e2e"] - r["gen"] for r in bot_runs)
    return {
        "size": f"{size}x{size}",
        "steps": steps,
        "runs": runs,
        "identical_pixels": bool(identical),
        "median_s_bare_generate": round(med_bare, 4),
        "median_s_bot_generation": round(med["gen"], 4),
        "median_s_end_to_end": round(med["e2e"], 4),
        "median_s_end_to_end_emulator_clock": round(med["e2e_server"], 4),
        "median_ms_ack": round(med["ack"] * 1000, 2),
        "ratio_generation_over_bare": round(med["gen"] / med_bare, 3),
        "ratio_end_to_end_over_bare": round(med["e2e"] / med_bare, 3),
        "fixed_overhead_ms": round(fixed * 1000, 1),
        "end_to_end_minus_bare_ms": round((med["e2e"] - med_bare) * 1000, 1),
        "median_ms_invoke_to_generation": round(med["before_gen"] * 1000, 1),
        "median_ms_generation_to_result": round(med["after_gen"] * 1000, 1),
        "target_generation_ratio": TARGET_GEN_RATIO,
        "emulator_failures": failures,
        "all_s": {
            "bare": [round(t, 4) for t in bare_runs],
            "bot_generation": [round(r["gen"], 4) for r in bot_runs],
            "end_to_end": [round(r["e2e"], 4) for r in bot_runs],
        },
    }


# ----------------------------------------------------------------------------- (b) acks under load


async def _ack_load(
    data_dir: Path,
    model_dir: Path,
    n_jobs: int,
    n_users: int,
    interval_s: float,
    busy_steps: int,
    busy_size: int,
    load_size: int,
    load_steps: int,
) -> dict[str, Any]:
    async with _bot(data_dir, model_dir, n_users=n_users) as (env, timed, users):
        emu = env.emu
        channel = emu.guild().channel("general")
        # Keep the worker busy: one long 4-image job, started before the load.
        busy = await emu.invoke(
            emu.user("bob"), channel, "imagine",
            {"prompt": "a busy worker, " + PROMPT, "aspect": f"{busy_size}x{busy_size}", "steps": busy_steps, "count": 4},
        )
        await busy.wait_acked(5)
        await emu.wait_until(lambda: timed.active.is_set(), 30, "the worker to start generating")
        busy_batches = timed.started

        interactions = []
        started = time.perf_counter()
        for i in range(n_jobs):
            user = users[i % len(users)]
            it = await emu.invoke(
                user, channel, "imagine",
                {"prompt": f"{PROMPT}, variant {i}", "aspect": f"{load_size}x{load_size}", "steps": load_steps, "seed": i},
            )
            interactions.append(it)
            if interval_s > 0:
                await asyncio.sleep(interval_s)
            elif i % 20 == 19:
                await asyncio.sleep(0)  # a burst, but let the loop breathe now and then
        invoke_phase = time.perf_counter() - started
        busy_during_invokes = timed.active.is_set() and timed.started == busy_batches

        acked = 0
        for it in interactions:
            with contextlib.suppress(TimeoutError):
                await it.wait_acked(max(0.1, emu.settings.initial_response_timeout - (time.monotonic() - it.created_at)))
                acked += 1
        # The "queued" notice: the deferred response filled in (jobs are in the queue by then).
        deadline = time.monotonic() + 30  # one deadline for all: a bot that never fills them must not hang us
        for it in interactions:
            with contextlib.suppress(TimeoutError):
                await it.original(max(0.01, deadline - time.monotonic()))
        generating_at_end = timed.active.is_set()
        depth = (await env.services.queue.counts()).get("queued", 0)

        ack = [it.acked_at - it.created_at for it in interactions if it.acked_at is not None]
        created = {e.data["id"]: e.at for e in emu.events_of("interaction")}
        filled = {e.data["id"]: e.at for e in emu.events_of("message.update") if e.data.get("filled_deferral")}
        queued = [
            filled[it.original_message.id] - created[it.id]
            for it in interactions
            if it.original_message is not None and it.original_message.id in filled and it.id in created
        ]
        failures = [f for f in emu.failures if f.interaction_id in {it.id for it in interactions}]

    return {
        "jobs": n_jobs,
        "users": n_users,
        "invoke_interval_s": interval_s,
        "invoke_phase_s": round(invoke_phase, 3),
        "busy_job": f"{busy_size}x{busy_size}, {busy_steps} steps, 4 images",
        "load_jobs": f"{load_size}x{load_size}, {load_steps} steps",
        "worker_busy_whole_invoke_phase": bool(busy_during_invokes),
        "worker_generating_after_all_queued": bool(generating_at_end),
        "queued_after": depth,
        "acked": acked,
        "ack_p50_ms": round(_pct(ack, 50) * 1000, 1),
        "ack_p90_ms": round(_pct(ack, 90) * 1000, 1),
        "ack_p99_ms": round(_pct(ack, 99) * 1000, 1),
        "ack_max_ms": round(max(ack) * 1000, 1) if ack else None,
        "queued_notice_p50_ms": round(_pct(queued, 50) * 1000, 1),
        "queued_notice_p99_ms": round(_pct(queued, 99) * 1000, 1),
        "target_ack_p99_ms": TARGET_ACK_P99_S * 1000,
        "interaction_failures": len(failures),
        "failure_examples": [str(f) for f in failures[:3]],
    }


# ----------------------------------------------------------------------------- entry points


def _prepare(threads: int | None, model_dir: str | Path | None, tmp: Path) -> Path:
    import torch

    from gen_core.tiny import ensure_tiny_model

    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("discord").setLevel(logging.WARNING)
    return ensure_tiny_model(Path(model_dir) if model_dir else tmp / "tiny")


def run_overhead(
    size: int = 512, steps: int = 20, runs: int = 5, warmup: int = 1, seed: int = 1234,
    threads: int | None = None, model_dir: str | Path | None = None,
) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-bot-") as tmp:
        path = _prepare(threads, model_dir, Path(tmp))
        out = asyncio.run(_overhead(Path(tmp) / "data", path, size, steps, runs, warmup, seed))
    return {"bench": "bot_e2e.overhead", "torch_threads": torch.get_num_threads(), **out}


def run_ack_load(
    n_jobs: int = 200, n_users: int = 20, interval_s: float = 0.02, busy_steps: int = 150,
    busy_size: int = 512, load_size: int = 512, load_steps: int = 20,
    threads: int | None = None, model_dir: str | Path | None = None,
) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-bot-") as tmp:
        path = _prepare(threads, model_dir, Path(tmp))
        out = asyncio.run(
            _ack_load(Path(tmp) / "data", path, n_jobs, n_users, interval_s, busy_steps, busy_size, load_size, load_steps)
        )
    return {"bench": "bot_e2e.ack_load", "torch_threads": torch.get_num_threads(), **out}


def run(
    size: int = 512, steps: int = 20, runs: int = 5, n_jobs: int = 200, n_users: int = 20,
    interval_s: float = 0.02, busy_steps: int = 150, burst: bool = True, threads: int | None = None,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """(a), then (b) with invokes ``interval_s`` apart, then (b) as one burst (``burst``); each with
    its own fresh bot and database."""
    common = {"threads": threads, "model_dir": model_dir}
    load = {"n_jobs": n_jobs, "n_users": n_users, "busy_steps": busy_steps, "busy_size": size,
            "load_size": size, "load_steps": steps, **common}
    out: dict[str, Any] = {
        "bench": "bot_e2e",
        "overhead": run_overhead(size=size, steps=steps, runs=runs, **common),
        "ack_load": run_ack_load(interval_s=interval_s, **load),
    }
    if burst:
        out["ack_burst"] = run_ack_load(interval_s=0.0, **load)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between invokes (0: a burst)")
    parser.add_argument("--busy-steps", type=int, default=150)
    parser.add_argument("--only", choices=["overhead", "ack"], default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--model-dir", default=None, help="existing/created tiny model directory")
    args = parser.parse_args(argv)
    common = {"threads": args.threads, "model_dir": args.model_dir}
    if args.only != "ack":
        a = run_overhead(size=args.size, steps=args.steps, runs=args.runs, **common)
        print(json.dumps(a, indent=2))
        print(
            f"/imagine {a['size']} {a['steps']} steps end to end {a['median_s_end_to_end'] * 1000:.0f} ms vs bare "
            f"engine.generate {a['median_s_bare_generate'] * 1000:.0f} ms (x{a['ratio_end_to_end_over_bare']:.3f}); "
            f"generation inside the bot x{a['ratio_generation_over_bare']:.3f} (target <= {TARGET_GEN_RATIO}); "
            f"fixed overhead {a['fixed_overhead_ms']:.0f} ms (medians of {a['runs']} interleaved runs)"
        )
    if args.only != "overhead":
        b = run_ack_load(
            n_jobs=args.jobs, n_users=args.users, interval_s=args.interval, busy_steps=args.busy_steps,
            busy_size=args.size, load_size=args.size, load_steps=args.steps, **common,
        )
        print(json.dumps(b, indent=2))
        print(
            f"{b['acked']}/{b['jobs']} /imagine acknowledged with the worker busy: p50 {b['ack_p50_ms']:.1f} ms, "
            f"p99 {b['ack_p99_ms']:.1f} ms (target < {TARGET_ACK_P99_S * 1000:.0f} ms); 'queued' notice p50 "
            f"{b['queued_notice_p50_ms']:.1f} ms, p99 {b['queued_notice_p99_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
