"""The durable fair job queue: reservation under concurrency, idempotency, crash recovery, fairness, batching,
cancel, pause. Every scenario ends with the ledger invariant checked (see ``environment``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage import CostPolicy, InsufficientCredits, JobQueue, JobStatus, Ledger, QueueFull, SqlJobQueue
from storage.models import LedgerKind
from tests.test_storage_support import (
    BACKENDS,
    DEFAULT_POLICY,
    SQLITE_BACKENDS,
    environment,
    open_database,
    spec,
)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def ids(pair):
    return tuple([j.id for j in jobs] for jobs in pair)


async def kinds(ledger: Ledger, guild_id: int, user_id: int) -> list[tuple[str, int]]:
    return [(e.kind, e.delta) for e in reversed(await ledger.entries(guild_id, user_id, limit=1000))]


async def test_job_queue_is_the_sql_queue_and_an_interface(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        assert isinstance(env.queue, SqlJobQueue) and isinstance(env.queue, JobQueue)
        with pytest.raises(TypeError):
            type("Incomplete", (JobQueue,), {})()


async def test_fifty_concurrent_reservations_with_credit_for_ten(backend, tmp_path):
    policy = CostPolicy(start_balance=10, topup_floor=0, max_queued_per_user=100)
    async with environment(backend, tmp_path, policy) as env:
        results = await asyncio.gather(
            *(env.queue.enqueue(spec(7)) for _ in range(50)), return_exceptions=True
        )
        ok = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, InsufficientCredits)]
        assert len(ok) == 10 and len(refused) == 40, [r for r in results if isinstance(r, BaseException)][:3]
        assert all(created for _, created in ok)
        assert {e.cost for e in refused} == {1} and {e.balance for e in refused} == {0}
        assert await env.ledger.balance(100, 7) == 0
        assert (await env.queue.counts())["queued"] == 10
        assert sorted(await kinds(env.ledger, 100, 7)) == sorted([("start", 10)] + [("reserve", -1)] * 10)


async def test_enqueue_charges_and_records(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, created = await env.queue.enqueue(spec(1, cost=7))
        assert created and job.status == JobStatus.QUEUED and job.cost == 7 and job.attempts == 0
        assert job.params == {"prompt": "a cat", "seed": 1} and job.posted_message_id is None
        assert job.created_at == env.clock.now
        assert await env.ledger.balance(100, 1) == 93
        (reserve, start) = await env.ledger.entries(100, 1)
        assert (reserve.kind, reserve.delta, reserve.job_id, reserve.idempotency_key) == (
            LedgerKind.RESERVE, -7, job.id, f"reserve:{job.id}",
        )  # fmt: skip
        assert start.kind == LedgerKind.START
        stored = await env.queue.get(job.id)
        assert (
            stored is not None
            and stored.interaction_id == job.interaction_id
            and stored.start_tag == job.start_tag
        )


async def test_enqueue_is_idempotent_on_interaction_id(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        first, created = await env.queue.enqueue(spec(1, cost=5, interaction_id=42))
        again, created_again = await env.queue.enqueue(spec(1, cost=5, interaction_id=42))
        assert created and not created_again and again.id == first.id
        concurrent = await asyncio.gather(
            *(env.queue.enqueue(spec(1, cost=5, interaction_id=43)) for _ in range(8))
        )
        assert len({j.id for j, _ in concurrent}) == 1 and sum(c for _, c in concurrent) == 1
        assert await env.ledger.balance(100, 1) == 90  # charged once per interaction
        assert len(await env.queue.list(user_id=1)) == 2


async def test_refusals_write_nothing(backend, tmp_path):
    policy = CostPolicy(start_balance=10, topup_floor=0, max_queued_per_user=2)
    async with environment(backend, tmp_path, policy) as env:
        with pytest.raises(InsufficientCredits) as too_dear:
            await env.queue.enqueue(spec(1, cost=11))
        assert (too_dear.value.cost, too_dear.value.balance) == (11, 10)
        assert "11" in str(too_dear.value) and "10" in str(too_dear.value)
        await env.queue.enqueue(spec(1, cost=1))
        await env.queue.enqueue(spec(1, cost=1))
        with pytest.raises(QueueFull) as full:
            await env.queue.enqueue(spec(1, cost=1))
        assert full.value.limit == 2
        assert await env.ledger.balance(100, 1) == 8
        assert len(await kinds(env.ledger, 100, 1)) == 3
        assert len(await env.queue.list(statuses=None)) == 2
        # a brand-new user refused for credit leaves no account behind either
        with pytest.raises(InsufficientCredits):
            await env.queue.enqueue(spec(2, cost=50))
        assert await env.ledger.entries(100, 2) == []


async def test_claim_complete_settles_once(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=4))
        (claimed,) = await env.queue.claim("w1", max_batch=4, lease_s=30)
        assert claimed.id == job.id and claimed.status == JobStatus.RUNNING and claimed.attempts == 1
        assert claimed.worker_id == "w1" and (claimed.lease_expires_at - env.clock.now).total_seconds() == 30
        assert await env.queue.claim("w2") == []
        assert await env.queue.complete(job.id, {"images": ["ab/cd.png"]})
        assert not await env.queue.complete(job.id, {"images": []})
        assert not await env.queue.fail(job.id, "late failure")
        assert not await env.queue.cancel(job.id, actor_id=9)
        done = await env.queue.get(job.id)
        assert done.status == JobStatus.DONE and done.result == {"images": ["ab/cd.png"]} and done.finished_at
        assert await env.ledger.balance(100, 1) == 96
        assert await kinds(env.ledger, 100, 1) == [("start", 100), ("reserve", -4), ("settle", 0)]


async def test_complete_with_lower_final_cost_refunds_difference(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=10))
        await env.queue.claim("w")
        assert await env.queue.complete(job.id, {}, final_cost=6)
        assert await env.ledger.balance(100, 1) == 94
        assert await kinds(env.ledger, 100, 1) == [("start", 100), ("reserve", -10), ("settle", 4)]


async def test_fail_refunds_exactly_once(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=9))
        await env.queue.claim("w")
        results = await asyncio.gather(*(env.queue.fail(job.id, "CUDA out of memory") for _ in range(5)))
        assert sorted(results) == [False] * 4 + [True]
        assert not await env.queue.fail(job.id, "again")
        assert not await env.queue.complete(job.id, {})
        failed = await env.queue.get(job.id)
        assert failed.status == JobStatus.FAILED and failed.error == "CUDA out of memory"
        assert await env.ledger.balance(100, 1) == 100
        assert await kinds(env.ledger, 100, 1) == [("start", 100), ("reserve", -9), ("refund", 9)]


async def test_fail_of_a_queued_job_refunds(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=3))
        assert await env.queue.fail(job.id, "invalid parameters")
        assert await env.ledger.balance(100, 1) == 100


async def test_expired_lease_is_requeued_and_completes_once(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=2))
        await env.queue.claim("crashed-worker", lease_s=60)
        env.clock.advance(59)
        assert await env.queue.requeue_expired() == ([], [])  # lease still valid
        env.clock.advance(2)
        assert ids(await env.queue.requeue_expired()) == ([job.id], [])
        requeued = await env.queue.get(job.id)
        assert requeued.status == JobStatus.QUEUED and requeued.worker_id is None and requeued.attempts == 1
        (again,) = await env.queue.claim("new-worker", lease_s=60)
        assert again.id == job.id and again.attempts == 2
        assert await env.queue.complete(job.id, {"ok": True})
        # the crashed worker coming back late changes nothing
        assert not await env.queue.complete(job.id, {"ok": "late"})
        assert (await env.queue.get(job.id)).result == {"ok": True}
        assert await kinds(env.ledger, 100, 1) == [("start", 100), ("reserve", -2), ("settle", 0)]


async def test_lease_expiring_max_attempts_times_fails_and_refunds(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=5))
        for attempt in (1, 2):
            (claimed,) = await env.queue.claim("w", lease_s=10)
            assert claimed.attempts == attempt
            env.clock.advance(11)
            assert ids(await env.queue.requeue_expired(max_attempts=3)) == ([job.id], [])
        await env.queue.claim("w", lease_s=10)
        env.clock.advance(11)
        requeued, failed = await env.queue.requeue_expired(max_attempts=3)
        assert requeued == [] and [j.id for j in failed] == [job.id]
        assert failed[0].status == JobStatus.FAILED and failed[0].channel_id == 500  # enough to tell the user
        assert await env.queue.requeue_expired(max_attempts=3) == ([], [])
        failed = await env.queue.get(job.id)
        assert failed.status == JobStatus.FAILED and "3 times" in failed.error
        assert await env.ledger.balance(100, 1) == 100


async def test_heartbeat_keeps_a_slow_job_alive_and_drops_a_cancelled_one(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        a, _ = await env.queue.enqueue(spec(1))
        b, _ = await env.queue.enqueue(spec(1))
        await env.queue.register_worker("w", kind="embedded", host="h", pid=1, lease_s=10)
        await env.queue.claim("w", max_batch=2, lease_s=10)
        env.clock.advance(8)
        assert await env.queue.cancel(b.id, actor_id=1)
        assert await env.queue.heartbeat("w", 10) == [a.id]  # b was cancelled: stop it
        env.clock.advance(8)
        assert await env.queue.requeue_expired() == ([], [])
        assert await env.queue.complete(a.id, {})


async def test_release_on_shutdown_does_not_count_an_attempt(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1))
        await env.queue.claim("w")
        assert await env.queue.release([job.id]) == 1
        assert await env.queue.release([job.id]) == 0
        released = await env.queue.get(job.id)
        assert (
            released.status == JobStatus.QUEUED
            and released.attempts == 0
            and released.lease_expires_at is None
        )
        (again,) = await env.queue.claim("w")
        assert again.attempts == 1
        await env.queue.complete(job.id, {})


async def test_fair_share_newcomer_is_not_starved(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        burst = [(await env.queue.enqueue(spec(1, cost=3)))[0] for _ in range(20)]
        newcomer, _ = await env.queue.enqueue(spec(2, cost=3))
        assert await env.queue.position(newcomer.id) == 2
        first = (await env.queue.claim("w", max_batch=1))[0]
        second = (await env.queue.claim("w", max_batch=1))[0]
        assert newcomer.id in (first.id, second.id)
        assert first.id == burst[0].id  # FIFO among equals
        for job in (first, second):
            await env.queue.complete(job.id, {})
        # the rest of the burst then runs in order
        order = []
        while batch := await env.queue.claim("w", max_batch=1):
            order.append(batch[0].id)
            await env.queue.complete(batch[0].id, {})
        assert order == [j.id for j in burst[1:]]


async def test_fair_share_interleaves_two_bursts_and_weights_by_cost(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        for _ in range(4):
            await env.queue.enqueue(spec(1, cost=2))
        for _ in range(4):
            await env.queue.enqueue(spec(2, cost=1))
        users = []
        while batch := await env.queue.claim("w", max_batch=1):
            users.append(batch[0].user_id)
            await env.queue.complete(batch[0].id, {})
        # user 2's jobs are half the price, so they get twice the turns early on
        assert users == [1, 2, 2, 1, 2, 2, 1, 1]


async def test_returning_user_does_not_jump_ahead_of_virtual_time(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        for _ in range(3):
            await env.queue.enqueue(spec(1, cost=1))
        for _ in range(3):
            job = (await env.queue.claim("w", max_batch=1))[0]
            await env.queue.complete(job.id, {})
        late, _ = await env.queue.enqueue(spec(3, cost=1))
        assert late.start_tag >= 2  # virtual time moved on with the claims


async def test_batch_claim_takes_only_the_same_batch_key(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        keys = ["a", "b", "a", "a", "b", "a", "a"]
        jobs = [(await env.queue.enqueue(spec(10 + i, batch_key=k)))[0] for i, k in enumerate(keys)]
        batch = await env.queue.claim("w", max_batch=4)
        assert [j.id for j in batch] == [jobs[i].id for i in (0, 2, 3, 5)]
        assert {j.batch_key for j in batch} == {"a"} and all(j.status == JobStatus.RUNNING for j in batch)
        batch2 = await env.queue.claim("w", max_batch=4)
        assert [j.id for j in batch2] == [jobs[1].id, jobs[4].id]  # next in fair order is a "b"
        batch3 = await env.queue.claim("w", max_batch=4)
        assert [j.id for j in batch3] == [jobs[6].id]
        for j in batch + batch2 + batch3:
            await env.queue.complete(j.id, {})


async def test_cancel_queued_job_refunds_and_is_never_claimed(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=6))
        assert await env.queue.cancel(job.id, actor_id=1)
        assert not await env.queue.cancel(job.id, actor_id=1)
        cancelled = await env.queue.get(job.id)
        assert cancelled.status == JobStatus.CANCELLED and cancelled.cancelled_by == 1
        assert await env.queue.is_cancelled(job.id)
        assert await env.queue.claim("w") == []
        assert await env.ledger.balance(100, 1) == 100
        assert not await env.queue.cancel(999_999, actor_id=1)


async def test_cancelling_the_latest_queued_job_gives_back_its_turn(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        first, _ = await env.queue.enqueue(spec(1, cost=5))
        second, _ = await env.queue.enqueue(spec(1, cost=5))
        await env.queue.cancel(second.id, actor_id=1)
        third, _ = await env.queue.enqueue(spec(1, cost=5))
        assert third.start_tag == second.start_tag == first.start_tag + 5


async def test_cancel_running_job_worker_sees_it_and_refund_once(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=6))
        await env.queue.claim("w")
        assert not await env.queue.is_cancelled(job.id)
        assert await env.queue.cancel(job.id, actor_id=77)
        assert await env.queue.is_cancelled(job.id)
        assert not await env.queue.complete(job.id, {})  # the worker finishing anyway changes nothing
        assert not await env.queue.fail(job.id, "stopped")
        assert await env.queue.requeue_expired() == ([], [])
        assert await env.ledger.balance(100, 1) == 100
        assert await kinds(env.ledger, 100, 1) == [("start", 100), ("reserve", -6), ("refund", 6)]


async def test_pause_and_resume_a_guild(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        await env.queue.pause(100, actor_id=5)
        assert await env.queue.is_paused(100) and not await env.queue.is_paused(200)
        paused_job, _ = await env.queue.enqueue(spec(1, guild_id=100))
        other, _ = await env.queue.enqueue(spec(2, guild_id=200))
        assert await env.queue.position(other.id) == 1  # the paused guild's job is not ahead of it
        (claimed,) = await env.queue.claim("w")
        assert claimed.id == other.id
        assert await env.queue.claim("w") == []
        await env.queue.resume(100)
        assert not await env.queue.is_paused(100)
        (claimed,) = await env.queue.claim("w")
        assert claimed.id == paused_job.id
        for j in (other, paused_job):
            await env.queue.complete(j.id, {})


async def test_mark_posted_is_exactly_once(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1))
        await env.queue.claim("w")
        await env.queue.complete(job.id, {})
        assert await env.queue.mark_posted(job.id, 123456789012345678)
        assert not await env.queue.mark_posted(job.id, 999)
        assert (await env.queue.get(job.id)).posted_message_id == 123456789012345678


async def test_position_eta_list_counts(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        a, _ = await env.queue.enqueue(spec(1, cost=4, batch_key="x"))
        b, _ = await env.queue.enqueue(spec(2, cost=2, batch_key="y"))
        c, _ = await env.queue.enqueue(spec(3, cost=3, batch_key="z"))
        assert [await env.queue.position(j.id) for j in (a, b, c)] == [1, 2, 3]
        assert await env.queue.eta(c.id, 1.0) == 4 + 2 + 3
        await env.queue.claim("w", max_batch=1)
        env.clock.advance(1.5)
        assert await env.queue.position(a.id) == 0
        assert await env.queue.eta(a.id, 1.0) == pytest.approx(2.5)
        assert await env.queue.eta(c.id, 1.0) == pytest.approx(2.5 + 2 + 3)
        assert await env.queue.position(c.id) == 2
        assert [j.id for j in await env.queue.list()] == [a.id, b.id, c.id]
        assert [j.id for j in await env.queue.list(user_id=2)] == [b.id]
        assert [j.id for j in await env.queue.list(statuses=["running"])] == [a.id]
        assert await env.queue.counts() == {"queued": 2, "running": 1, "done": 0, "failed": 0, "cancelled": 0}
        await env.queue.complete(a.id, {})
        assert await env.queue.eta(a.id, 1.0) == 0.0 and await env.queue.position(a.id) == 0
        assert await env.queue.get(424242) is None
        for j in (b, c):
            await env.queue.cancel(j.id, actor_id=None)


async def test_guild_policy_override_applies_to_new_accounts_and_queue_cap(backend, tmp_path):
    from storage import settings

    async with environment(backend, tmp_path) as env:
        await settings.set_guild_policy(env.db, 300, actor_id=1, start_balance=3, max_queued_per_user=1)
        assert await env.ledger.balance(300, 1) == 3
        assert await env.ledger.balance(100, 1) == DEFAULT_POLICY.start_balance
        await env.queue.enqueue(spec(1, guild_id=300))
        with pytest.raises(QueueFull):
            await env.queue.enqueue(spec(1, guild_id=300))


async def test_guild_queue_cap_never_exceeds_the_bots(backend, tmp_path):
    """The bot's ``max_queued_per_user`` is a hard limit: a guild's larger override (stored before the bot's was
    lowered) counts as the bot's."""
    from storage import settings

    async with environment(backend, tmp_path, CostPolicy(start_balance=100, topup_floor=0, max_queued_per_user=1)) as env:
        await settings.set_guild_policy(env.db, 300, actor_id=1, max_queued_per_user=5)
        assert (await env.ledger.policy_for(300)).max_queued_per_user == 1
        await env.queue.enqueue(spec(1, guild_id=300))
        with pytest.raises(QueueFull):
            await env.queue.enqueue(spec(1, guild_id=300))


@pytest.mark.parametrize("backend", SQLITE_BACKENDS)
async def test_two_processes_share_one_file_without_losing_credits(backend, tmp_path):
    """Two Database objects (as two processes would) contend through SQLite's lock and busy_timeout, not
    through the in-process asyncio lock."""
    policy = CostPolicy(start_balance=10, topup_floor=0, max_queued_per_user=100)
    async with environment(backend, tmp_path, policy) as env:
        other = await open_database(backend, tmp_path, env.clock, upgrade=False)
        try:
            q2 = JobQueue(other, policy)
            results = await asyncio.gather(
                *(q.enqueue(spec(5)) for q in [env.queue, q2] * 15), return_exceptions=True
            )
            ok = [r for r in results if not isinstance(r, BaseException)]
            assert len(ok) == 10, [r for r in results if not isinstance(r, InsufficientCredits)][:3]
            assert all(isinstance(r, InsufficientCredits) for r in results if isinstance(r, BaseException))
            # and both can run the worker side at once
            claimed = await asyncio.gather(
                *(q.claim(f"w{i}", max_batch=1) for i, q in enumerate([env.queue, q2] * 5))
            )
            ids = [j.id for batch in claimed for j in batch]
            assert len(ids) == len(set(ids)) == 10
            await asyncio.gather(*(q.complete(i, {}) for q, i in zip([env.queue, q2] * 5, ids, strict=True)))
            assert await env.ledger.balance(100, 5) == 0
        finally:
            await other.close()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_killed_worker_process_job_is_recovered(backend, tmp_path):
    """A real crash: a child process claims a job and is SIGKILLed mid-run; the next process reaps it."""
    db_path = tmp_path / "bot.db"
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=3))
        child = textwrap.dedent(
            f"""
            import asyncio, os, signal
            from storage import Database, JobQueue
            async def main():
                db = Database("sqlite+aiosqlite:///{db_path}")
                (job,) = await JobQueue(db).claim("doomed", lease_s=30)
                print(job.id, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            asyncio.run(main())
            """
        )
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
        assert proc.returncode == -9, proc.stderr
        assert proc.stdout.strip() == str(job.id)
        running = await env.queue.get(job.id)
        assert running.status == JobStatus.RUNNING and running.worker_id == "doomed"
        # the child used the real clock; move ours past its lease
        env.clock.now = running.lease_expires_at
        env.clock.advance(1)
        assert ids(await env.queue.requeue_expired()) == ([job.id], [])
        (again,) = await env.queue.claim("survivor")
        assert again.attempts == 2
        assert await env.queue.complete(job.id, {"ok": 1})
        assert await env.ledger.balance(100, 1) == 97
