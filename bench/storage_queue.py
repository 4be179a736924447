"""Durable queue throughput on SQLite: 8 concurrent producers enqueue (credit reservation + fair-share tag),
one consumer claims batches and completes each job (settlement). Every job goes through three write
transactions, each with its ledger entry.

    python -m bench.storage_queue [--jobs N] [--producers P] [--max-batch B] [--no-compare]

Printed side by side, same run: the default SQLite path (each transaction runs whole on the writer thread) and
the ``AsyncSession.run_sync`` path over aiosqlite (one thread hop per statement; the path PostgreSQL takes).
``run(n_jobs=...)`` returns the measurements as a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from storage import CostPolicy, Database, JobQueue, JobSpec, Ledger

TARGET_JOBS_PER_S = 500


async def _run(
    db_path: Path, n_jobs: int, producers: int, max_batch: int, batch_keys: int, sqlite_threads: bool
) -> dict[str, Any]:
    db = Database(f"sqlite+aiosqlite:///{db_path}", sqlite_threads=sqlite_threads)
    await db.upgrade()
    policy = CostPolicy(start_balance=10**9, max_queued_per_user=10**9, topup_period_s=0)
    queue = JobQueue(db, policy)
    ledger = Ledger(db, policy)
    per_producer = n_jobs // producers
    total = per_producer * producers
    for p in range(producers):  # open the accounts outside the timed part
        await ledger.balance(1, 1000 + p)

    enqueue_latencies: list[float] = []
    claims = 0
    done = 0

    async def producer(p: int) -> None:
        for i in range(per_producer):
            spec = JobSpec(
                kind="imagine",
                guild_id=1,
                channel_id=10,
                user_id=1000 + p,
                interaction_id=f"{p}:{i}",
                params={"prompt": f"bench {p} {i}", "seed": i, "width": 512, "height": 512},
                batch_key=f"key{i % batch_keys}",
                cost=1 + i % 4,
            )
            t0 = time.perf_counter()
            await queue.enqueue(spec)
            enqueue_latencies.append(time.perf_counter() - t0)

    async def consumer() -> None:
        nonlocal claims, done
        while done < total:
            batch = await queue.claim("bench-worker", max_batch=max_batch, lease_s=60)
            if not batch:
                await asyncio.sleep(0.0005)
                continue
            claims += 1
            for job in batch:
                await queue.complete(job.id, {"images": [{"key": "00/" + "0" * 64 + ".png", "seed": job.id}]})
                done += 1

    start = time.perf_counter()
    consumer_task = asyncio.create_task(consumer())
    await asyncio.gather(*(producer(p) for p in range(producers)))
    enqueue_elapsed = time.perf_counter() - start
    await consumer_task
    elapsed = time.perf_counter() - start

    problems = await ledger.check_invariant()
    counts = await queue.counts()
    await db.close()
    return {
        "path": "writer thread" if sqlite_threads else "run_sync over aiosqlite",
        "jobs": total,
        "producers": producers,
        "max_batch": max_batch,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(total / elapsed, 1),
        "enqueue_phase_jobs_per_s": round(total / enqueue_elapsed, 1),
        "enqueue_p50_ms": round(statistics.median(enqueue_latencies) * 1000, 2),
        "enqueue_p99_ms": round(statistics.quantiles(enqueue_latencies, n=100)[98] * 1000, 2),
        "mean_batch": round(total / max(claims, 1), 2),
        "done": counts["done"],
        "ledger_problems": len(problems),
    }


def run(
    n_jobs: int = 2000,
    producers: int = 8,
    max_batch: int = 4,
    batch_keys: int = 3,
    sqlite_threads: bool = True,
) -> dict[str, Any]:
    """Enqueue + claim + complete ``n_jobs`` on a fresh SQLite file; returns the measurements
    (``jobs_per_s`` is the headline number)."""
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        return asyncio.run(
            _run(Path(tmp) / "bench.db", n_jobs, producers, max_batch, batch_keys, sqlite_threads)
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--no-compare", action="store_true", help="only the default path")
    args = parser.parse_args()
    results = [run(args.jobs, args.producers, args.max_batch)]
    if not args.no_compare:
        results.append(run(args.jobs, args.producers, args.max_batch, sqlite_threads=False))
    width = max(len(k) for k in results[0])
    for key in results[0]:
        print(f"{key:>{width}}: " + "".join(f"{r[key]!s:>26}" for r in results))
    main_result = results[0]
    print(
        f"queue throughput {main_result['jobs_per_s']} jobs/s on SQLite "
        f"= {main_result['jobs_per_s'] / TARGET_JOBS_PER_S:.2f}x the {TARGET_JOBS_PER_S} jobs/s target"
    )
    if len(results) > 1:
        print(
            f"writer thread vs run_sync over aiosqlite: {main_result['jobs_per_s'] / results[1]['jobs_per_s']:.2f}x"
        )
    if any(r["ledger_problems"] or r["done"] != r["jobs"] for r in results):
        raise SystemExit("ledger problems or unfinished jobs")


if __name__ == "__main__":
    main()
