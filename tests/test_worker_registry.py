"""Two processes on one database (SQLite and PostgreSQL): a worker process holds a job and beats; this
test's process, registered as a second worker on the same host, never takes the live worker's job — and
takes it at once, long before its lease ends, when the other process is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage import JobStatus
from tests.test_storage_support import BACKENDS, environment, spec
from worker.registry import Registration

LEASE_S = 600.0  # far longer than the test: only the registry can tell that the holder died

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from storage import Database, JobQueue
    from worker.registry import Registration

    async def main(url, lease_s):
        queue = JobQueue(Database(url))
        me = Registration(queue, kind="remote", lease_s=lease_s, max_attempts=3)
        await me.register()
        (job,) = await queue.claim(me.worker_id, lease_s=lease_s)
        print(job.id, me.worker_id, flush=True)
        while True:
            await me.beat()
            print("beat", flush=True)
            await asyncio.sleep(0.2)

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


async def test_a_live_workers_job_is_never_taken_and_a_killed_ones_at_once(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        env.clock.now = datetime.now(UTC)  # the other process reads the real clock
        job, _ = await env.queue.enqueue(spec(1, cost=3))
        url = env.db.url.render_as_string(hide_password=False)
        root = Path(__file__).resolve().parents[1]
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, url, str(LEASE_S), cwd=root, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
        try:
            job_id, holder_id = (await asyncio.wait_for(holder.stdout.readline(), 120)).decode().split()
            assert int(job_id) == job.id
            for _ in range(2):  # it beats
                assert (await asyncio.wait_for(holder.stdout.readline(), 60)).strip() == b"beat"
            me = Registration(env.queue, kind="embedded", lease_s=LEASE_S, max_attempts=3)
            await me.register()
            assert sorted(w.id for w in await env.queue.workers()) == sorted([holder_id, me.worker_id])
            assert await me.reap() == ([], [])  # the other process is alive: its job stays with it
            running = await env.queue.get(job.id)
            assert running.status == JobStatus.RUNNING and running.worker_id == holder_id
            assert await env.queue.claim(me.worker_id) == []
        finally:
            if holder.returncode is None:
                os.kill(holder.pid, signal.SIGKILL)
            assert await holder.wait() == -signal.SIGKILL
        requeued, failed = await me.reap()  # its process is gone: the job comes back now, not in 10 minutes
        assert [j.id for j in requeued] == [job.id] and failed == []
        assert [w.id for w in await env.queue.workers()] == [me.worker_id]
        (again,) = await env.queue.claim(me.worker_id)
        assert again.id == job.id and again.attempts == 2
        assert await env.queue.complete(job.id, {}, worker_id=me.worker_id)
        assert await env.ledger.balance(100, 1) == 97
