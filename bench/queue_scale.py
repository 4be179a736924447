"""The shared queue on PostgreSQL with 1, 4 and 16 worker processes: claim throughput and claim latency p99,
and the time a worker killed with SIGKILL mid-batch takes to have its jobs finished by another.

The workers are simulated: separate processes that import no torch and spend a fixed 200 ms of "GPU time" per
claimed job, so the CPU measures the queue (claims in fair order across 3 servers with ``FOR UPDATE SKIP
LOCKED``, leases, heartbeats, settlement), not the UNet. Each run uses a fresh database on the server.

    python -m bench.queue_scale [--url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--jobs 240]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from storage import CostPolicy, Database, JobQueue, JobSpec, Ledger
from worker.registry import Registration

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
GPU_S = 0.2
LEASE_S = 3.0


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _simulated_worker(url: str, out: Any, ready: Any, go: Any) -> None:
    """One worker process: claim one job, 200 ms of "GPU", complete; until the queue is empty for a second.
    It starts claiming when every worker is up (``go``): the timing leaves out process start-up."""

    async def main() -> None:
        db = Database(url)
        queue = JobQueue(db)
        me = Registration(queue, kind="remote", lease_s=LEASE_S, max_attempts=5)
        await me.register()
        beat = asyncio.create_task(me.keep_alive())
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        latencies, idle_since = [], None
        while True:
            t0 = time.perf_counter()
            jobs = await queue.claim(me.worker_id, max_batch=1, lease_s=LEASE_S)
            if not jobs:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    break
                await asyncio.sleep(0.05)
                continue
            latencies.append(time.perf_counter() - t0)  # a claim that found work
            idle_since = None
            await asyncio.sleep(GPU_S)
            for job in jobs:
                await queue.complete(job.id, {"images": []}, worker_id=me.worker_id)
        beat.cancel()
        await me.leave()
        await db.close()
        out.put(latencies)

    asyncio.run(main())


async def _fill(url: str, n_jobs: int) -> None:
    db = Database(url)
    await db.upgrade()
    policy = CostPolicy(start_balance=10**9, max_queued_per_user=10**9, topup_period_s=0)
    queue, ledger = JobQueue(db, policy), Ledger(db, policy)
    for i in range(n_jobs):
        guild, user = 1 + i % 3, 100 + i % 10
        await ledger.balance(guild, user)
        await queue.enqueue(JobSpec(kind="imagine", guild_id=guild, channel_id=1, user_id=user,
                                    interaction_id=f"bench:{i}", batch_key=f"k{i}", cost=1))  # fmt: skip
    await db.close()


async def _done(url: str) -> int:
    db = Database(url)
    try:
        return (await JobQueue(db).counts())["done"]
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def pg_database(admin: str) -> AsyncIterator[str]:
    """A fresh database on the server of ``admin`` (a PostgreSQL URL) for the block: its URL; dropped after."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    await _admin(admin, f"CREATE DATABASE {name}")
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await _admin(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def run_workers(
    admin: str, n_workers: int, n_jobs: int, kill_after_s: float | None = None
) -> dict[str, Any]:
    async with pg_database(admin) as url:
        await _fill(url, n_jobs)
        ctx = multiprocessing.get_context("spawn")
        out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_simulated_worker, args=(url, out, ready, go)) for _ in range(n_workers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        go.set()
        started = time.perf_counter()
        recovered = None
        if kill_after_s is not None:
            await asyncio.sleep(kill_after_s)
            db = Database(url)
            victim = procs[0]
            held = [
                j.id
                for j in await JobQueue(db).list(statuses=["running"])
                if f"-{victim.pid}-" in (j.worker_id or "")
            ]
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.perf_counter()
            queue = JobQueue(db)
            while held and [
                j
                for j in await queue.list(statuses=None, limit=10_000)
                if j.id in held and j.status != "done"
            ]:
                await asyncio.sleep(0.02)
            recovered = time.perf_counter() - killed if held else None
            await db.close()
        latencies = [x for _ in range(n_workers - (kill_after_s is not None)) for x in out.get(timeout=600)]
        wall = (
            time.perf_counter() - started - 1.0
        )  # each worker waits a second on an empty queue before it stops
        for p in procs:
            p.join(timeout=60)
        assert await _done(url) == n_jobs
        latencies.sort()
        return {
            "workers": n_workers, "jobs": n_jobs, "wall_s": wall, "jobs_per_s": n_jobs / wall,
            "claim_p50_ms": 1000 * statistics.median(latencies), "claim_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "recovered_s": recovered,
        }  # fmt: skip


def run(jobs: int = 240, url: str = DEFAULT_URL) -> dict[str, Any]:
    scale = [asyncio.run(run_workers(url, n, jobs)) for n in (1, 4, 16)]
    for row in scale:
        row["speedup"] = row["jobs_per_s"] / scale[0]["jobs_per_s"]
    return {"gpu_s": GPU_S, "lease_s": LEASE_S, "scale": scale, "kill_9": asyncio.run(run_workers(url, 4, 80, kill_after_s=2.0))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=240)
    args = parser.parse_args(argv)
    result = run(args.jobs, args.url)
    for r in result["scale"]:
        print(f"{r['workers']:>2} workers: {r['jobs_per_s']:6.1f} jobs/s ({r['speedup']:4.1f}x one), "
              f"claim p50 {r['claim_p50_ms']:.1f} ms, p99 {r['claim_p99_ms']:.1f} ms")  # fmt: skip
    print(f"kill -9 of one of 4 workers mid-batch: its job done on another after {result['kill_9']['recovered_s']:.2f} s "
          f"(lease {LEASE_S} s; same host: reaped as soon as its process is gone)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
