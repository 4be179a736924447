"""Crashes and restarts of the real bot: recovery time after ``kill -9``, a soak with random kills, and the
heartbeat's cost.

The bot runs as a separate process (``emulated_bot.BotProcess``: ``bot.main`` forked from a zygote that paid
the imports, SQLite, the tiny model, the default worker settings — a 10 s lease, a beat every 3.3 s)
against the Discord emulator in this process.

(a) recovery: ``rounds`` times, members ask for ``jobs`` images, the bot is killed with SIGKILL while a job
    samples, and started again. Reported: the start (fork → logged in) and restart → last answer, medians
    and worst; target: the last answer within 60 s of the restart.
(b) soak: ``n_jobs`` /imagine from ``n_members`` members, with ``kills`` SIGKILLs at random moments in
    between, each followed by a restart; then every accepted request must have exactly one final answer,
    nothing charged twice, ledger == balances (``bench.crash_audit``). Reported: lost, duplicated, problems.
(c) heartbeat overhead: what one beat costs (renew the worker and its leases, reap, look for due
    announcements — on a database holding the soak's jobs), as a share of the time between beats at the
    default lease; target ≤ 1 % of throughput.

    python -m bench.crash_recovery [--rounds 3] [--jobs 3] [--n-jobs 200] [--n-members 20] [--kills 5]
                                   [--beats 200] [--seed 1] [--model-dir DIR]

``run(...)`` returns a dict for a bench runner; ``run_recovery`` / ``run_soak`` / ``run_heartbeat`` each part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.crash_audit import Members, audit
from discord_emulator import Emulator
from emulated_bot import BotProcess, bot_config_data
from services.config import WorkerConfig

TARGET_RECOVERY_S = 60.0
TARGET_HEARTBEAT_SHARE = 0.01


def _url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'data' / 'bot.db'}"


async def _until_answered(emu: Emulator, folder: Path, members: Members, timeout: float = 600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report = await audit(emu, _url(folder), members)
        if not report["problems"] or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.25)


def _bot(emu: Emulator, folder: Path, model_dir: Path, steps: int) -> BotProcess:
    # production worker settings; the tiny model's short default sampling; room in the queue for every request
    data = bot_config_data(emu, folder / "data", model_dir, generation={"default_steps": steps}, limits={"max_queued_per_user": 50})
    data["worker"] = {}
    return BotProcess(emu, data, folder)


async def _recovery_round(model_dir: Path, jobs: int, steps: int) -> tuple[float, float, list[str]]:
    """(start s, restart → last answer s, problems) of one kill -9 while a job samples."""
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp:
        folder = Path(tmp)
        async with Emulator() as emu:
            bot = _bot(emu, folder, model_dir, steps)
            members = Members.create(emu, jobs)

            def sampling() -> bool:
                live = any("Generating" in m.content and not m.deleted for m in emu.messages.values())
                return len(members.accepted) == jobs and live

            try:
                began = time.monotonic()
                await bot.start()
                start = time.monotonic() - began
                emu.on_request("/messages/@original", lambda route: sampling() and (bot.kill() or True), after=True)
                await asyncio.gather(*(members.imagine(u, steps=steps) for u in members.users))
                await bot.wait_dead()
                restarted = time.monotonic()
                await bot.start()
                report = await _until_answered(emu, folder, members)
                return start, time.monotonic() - restarted, report["problems"]
            finally:
                await bot.stop()


async def run_recovery(model_dir: Path, rounds: int = 3, jobs: int = 3, steps: int = 12) -> dict[str, Any]:
    runs = [await _recovery_round(model_dir, jobs, steps) for _ in range(rounds)]
    starts, recoveries = [r[0] for r in runs], [r[1] for r in runs]
    return {
        "rounds": rounds, "jobs": jobs, "steps": steps,
        "start_median_s": round(statistics.median(starts), 2),
        "recovery_median_s": round(statistics.median(recoveries), 2),
        "recovery_max_s": round(max(recoveries), 2),
        "recovery_runs_s": [round(r, 2) for r in recoveries],
        "problems": [p for r in runs for p in r[2]],
    }  # fmt: skip


async def run_soak(
    model_dir: Path, n_jobs: int = 200, n_members: int = 20, kills: int = 5, steps: int = 3, seed: int = 1,
    folder: Path | None = None,
) -> dict[str, Any]:
    """``n_jobs`` requests from ``n_members`` members, ``kills`` SIGKILLs at random moments, then the audit."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        folder = folder or Path(tmp)
        async with Emulator() as emu:
            bot = _bot(emu, folder, model_dir, steps)
            members = Members.create(emu, n_members)
            kill_after = sorted(rng.sample(range(1, n_jobs), kills))  # kill after this many requests
            began = time.monotonic()
            unanswered = 0
            try:
                await bot.start()
                sent = 0
                while sent < n_jobs:
                    wave = min(n_jobs - sent, rng.randint(1, 8), (kill_after[0] - sent) if kill_after else n_jobs)
                    results = await asyncio.gather(*(members.imagine(rng.choice(members.users), steps=steps) for _ in range(wave)))
                    unanswered += results.count(None)
                    sent += wave
                    if kill_after and sent >= kill_after[0]:
                        kill_after.pop(0)
                        await asyncio.sleep(rng.uniform(0.0, 2.0))  # somewhere in the life of a job
                        bot.kill()
                        await bot.wait_dead()
                        await bot.start()
                report = await _until_answered(emu, folder, members)
            finally:
                await bot.stop()
            return {
                "n_jobs": n_jobs, "n_members": n_members, "kills": kills, "steps": steps, "seed": seed,
                "accepted": report["accepted"], "jobs": report["jobs"], "statuses": report["statuses"],
                "refused": len(members.refused), "refusals": sorted(set(members.refused))[:5],
                "not_accepted": unanswered - len(members.refused), "problems": report["problems"],
                "wall_s": round(time.monotonic() - began, 1),
            }  # fmt: skip


async def run_heartbeat(folder: Path, beats: int = 200, running: int = 4) -> dict[str, Any]:
    """One beat's cost on the soak's database (or a fresh one), while ``running`` jobs are held."""
    from storage import Database, JobQueue, JobSpec
    from worker.registry import Registration

    db = Database(_url(folder))
    await db.upgrade()
    queue = JobQueue(db)
    lease_s = WorkerConfig().lease_s
    me = Registration(queue, kind="embedded", lease_s=lease_s, max_attempts=3)
    await me.register()
    for i in range(running):
        spec = JobSpec(kind="imagine", guild_id=1, channel_id=2, user_id=3, interaction_id=f"bench-beat-{time.time()}-{i}",
                       params={}, batch_key=f"k{i}", cost=1)  # fmt: skip
        await queue.enqueue(spec)
        await queue.claim(me.worker_id, max_batch=1, lease_s=lease_s)
    samples = []
    for _ in range(beats):
        began = time.perf_counter()
        await me.beat()
        await me.reap()
        await queue.due_announcements(me.worker_id)
        samples.append(time.perf_counter() - began)
    await db.close()
    per_beat = statistics.median(samples)
    interval = lease_s / 3
    return {
        "beats": beats, "running_jobs": running, "lease_s": lease_s, "interval_s": round(interval, 2),
        "beat_median_ms": round(per_beat * 1000, 3), "beat_p99_ms": round(sorted(samples)[int(0.99 * len(samples)) - 1] * 1000, 3),
        "share_of_throughput": per_beat / interval,
    }  # fmt: skip


async def _run(model_dir: Path, rounds: int, jobs: int, n_jobs: int, n_members: int, kills: int, beats: int, seed: int) -> dict[str, Any]:
    recovery = await run_recovery(model_dir, rounds=rounds, jobs=jobs)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        soak = await run_soak(model_dir, n_jobs=n_jobs, n_members=n_members, kills=kills, seed=seed, folder=Path(tmp))
        heartbeat = await run_heartbeat(Path(tmp), beats=beats)
    return {"recovery": recovery, "soak": soak, "heartbeat": heartbeat}


def run(model_dir: Path, rounds: int = 3, jobs: int = 3, n_jobs: int = 200, n_members: int = 20, kills: int = 5,
        beats: int = 200, seed: int = 1) -> dict[str, Any]:  # fmt: skip
    return asyncio.run(_run(Path(model_dir), rounds, jobs, n_jobs, n_members, kills, beats, seed))


def main(argv: list[str] | None = None) -> int:
    from bench.common import tiny_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=200)
    parser.add_argument("--n-members", type=int, default=20)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--beats", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tiny_model_dir(args.model_dir) as model_dir:
        result = run(model_dir, args.rounds, args.jobs, args.n_jobs, args.n_members, args.kills, args.beats, args.seed)
    print(json.dumps(result, indent=2))
    ok = (
        result["recovery"]["recovery_max_s"] <= TARGET_RECOVERY_S and not result["recovery"]["problems"]
        and not result["soak"]["problems"] and result["heartbeat"]["share_of_throughput"] <= TARGET_HEARTBEAT_SHARE
    )  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
