"""The fair order across servers, then members (storage's claim order), workers that claim only what they can
run, the models registry, remote progress, and exact caps and claims under concurrency — on SQLite and on the
PostgreSQL service."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import pytest

from storage import WORK_CHANNEL, Capability, CostPolicy, JobQueue, JobStatus, ModelState, QueueFull
from tests.test_storage_support import BACKENDS, environment, spec


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


async def drain(queue, capability=None, max_batch=1):
    """Claim and complete until idle; the claimed jobs in claim order."""
    order = []
    while batch := await queue.claim("w", max_batch=max_batch, capability=capability):
        order += batch
        for job in batch:
            await queue.complete(job.id, {})
    return order


async def test_servers_share_equally_then_members_within(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        for _ in range(8):  # server 1: one member with a burst
            await env.queue.enqueue(spec(1, guild_id=1, batch_key="x"))
        for user in (2, 3, 4):  # server 2: three members, four jobs each
            for _ in range(4):
                await env.queue.enqueue(spec(user, guild_id=2, batch_key="x"))
        order = await drain(env.queue)
        guilds = [j.guild_id for j in order]
        assert guilds[:16] == [1, 2] * 8  # one member's burst gets what a server of three gets
        assert [j.user_id for j in order if j.guild_id == 2][:6] == [2, 3, 4, 2, 3, 4]


async def test_server_weights_from_config(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        queue = JobQueue(env.db, env.policy, guild_weights={1: 2.0})
        for guild in (1, 2):
            for _ in range(9):
                await queue.enqueue(spec(10 + guild, guild_id=guild))
        first = [j.guild_id for j in (await drain(queue))[:12]]
        assert Counter(first) == {1: 8, 2: 4}


async def test_a_server_that_was_idle_joins_at_the_current_turn(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        for _ in range(6):
            await env.queue.enqueue(spec(1, guild_id=1))
        for _ in range(4):  # server 1 is served alone for a while
            (job,) = await env.queue.claim("w", max_batch=1)
            await env.queue.complete(job.id, {})
        for _ in range(3):
            await env.queue.enqueue(spec(2, guild_id=2))
        # server 2 earned no credit while it had nothing queued: it alternates, it does not take three in a row
        assert [j.guild_id for j in await drain(env.queue)][:4] in ([2, 1, 2, 1], [1, 2, 1, 2])


async def test_batch_mates_come_from_servers_in_fair_order(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        for guild in (1, 1, 1, 2, 3):
            await env.queue.enqueue(spec(guild * 10, guild_id=guild, batch_key="same"))
        batch = await env.queue.claim("w", max_batch=3)
        assert [j.guild_id for j in batch] == [1, 2, 3]
        for job in batch:
            await env.queue.complete(job.id, {})
        assert [j.guild_id for j in await drain(env.queue)] == [1, 1]


async def test_a_worker_claims_only_what_it_can_run(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        def job(model, kind="imagine", area=64 * 64):
            return dataclasses.replace(spec(1), model=model, kind=kind, area=area)

        a1, _ = await env.queue.enqueue(job("a"))
        b1, _ = await env.queue.enqueue(job("b"))
        train, _ = await env.queue.enqueue(job("a", kind="hypernet_train"))
        big, _ = await env.queue.enqueue(job("a", area=1024 * 1024))
        small_a = Capability("a", ("imagine",), 512 * 512)
        assert [j.id for j in await drain(env.queue, small_a, max_batch=4)] == [a1.id]
        assert [j.id for j in await drain(env.queue, Capability("b", ("imagine", "hypernet_train"), 10**7))] == [b1.id]
        rest = await drain(env.queue, Capability("a", ("imagine", "hypernet_train"), 10**7), max_batch=4)
        assert sorted(j.id for j in rest) == sorted([train.id, big.id])


async def test_models_registry_and_workers(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        assert await env.queue.model_states() == {}
        cap = Capability("anime", ("imagine",), 1024 * 1024)
        await env.queue.register_worker("w1", kind="remote", host="h", pid=1, lease_s=10, capability=cap)
        await env.queue.register_worker("bot", kind="bot", host="h", pid=2, lease_s=10)
        assert await env.queue.model_states() == {"anime": ModelState(served=True, live_workers=1)}
        (w1,) = [w for w in await env.queue.workers() if w.id == "w1"]
        assert (w1.model, w1.max_area, w1.features) == ("anime", 1024 * 1024, ["imagine"])
        env.clock.advance(11)  # its lease ran out: the model is known, no worker is live
        assert await env.queue.model_states() == {"anime": ModelState(served=True, live_workers=0)}


async def test_remote_progress_and_depth_per_guild(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        a, _ = await env.queue.enqueue(spec(1, guild_id=1))
        b, _ = await env.queue.enqueue(spec(2, guild_id=2, batch_key="other"))
        await env.queue.enqueue(spec(3, guild_id=2, batch_key="other"))
        (running,) = await env.queue.claim("w", max_batch=1)
        assert await env.queue.depth_by_guild() == {1: {"queued": 0, "running": 1}, 2: {"queued": 2, "running": 0}}
        before = env.clock.now
        env.clock.advance(1)
        await env.queue.report_progress([running.id], 2, 5, "sampling", b"png")
        await env.queue.report_progress([running.id], 3, 5, "sampling", None)
        (report,) = await env.queue.progress_of([a.id, b.id], since=before)
        assert (report.job_id, report.step, report.total, report.preview) == (a.id, 3, 5, None)
        assert await env.queue.progress_of([a.id], since=env.clock.now) == []
        await env.queue.complete(a.id, {})
        assert await env.queue.progress_of([a.id]) == []  # finished: nothing to relay
        await drain(env.queue)


async def test_a_result_finished_while_cut_off_still_counts(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1))
        (job,) = await env.queue.claim("w1", lease_s=10)
        env.clock.advance(11)
        assert [j.id for j in (await env.queue.requeue_expired())[0]] == [job.id]  # reaped while w1 was cut off
        assert await env.queue.complete(job.id, {"images": []}, worker_id="w1")  # nobody took it since: it stands
        assert (await env.queue.get(job.id)).status == JobStatus.DONE
        other, _ = await env.queue.enqueue(spec(2))
        (other,) = await env.queue.claim("w1", lease_s=10)
        env.clock.advance(11)
        await env.queue.requeue_expired()
        (again,) = await env.queue.claim("w2", lease_s=10)
        assert not await env.queue.complete(other.id, {}, worker_id="w1")  # w2 runs it now: w1's result is dropped
        assert await env.queue.complete(again.id, {}, worker_id="w2")


async def test_member_caps_and_claims_are_exact_under_concurrency(backend, tmp_path):
    policy = CostPolicy(start_balance=1000, topup_floor=0, max_queued_per_user=5)
    async with environment(backend, tmp_path, policy) as env:
        # one member, two servers, 40 requests at once: exactly 5 queued in each server
        results = await asyncio.gather(
            *(env.queue.enqueue(spec(7, guild_id=1 + i % 2)) for i in range(40)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(e, QueueFull) for e in errors), errors[:3]
        assert Counter(j.guild_id for j, _ in (r for r in results if not isinstance(r, BaseException))) == {1: 5, 2: 5}
        for user in range(20, 30):
            await env.queue.enqueue(spec(user, guild_id=3))
        # eight claimers at once: every job claimed exactly once
        async def claimer(name):
            got = []
            while batch := await env.queue.claim(name, max_batch=2):
                got += [j.id for j in batch]
            return got

        claimed = sum(await asyncio.gather(*(claimer(f"w{i}") for i in range(8))), [])
        assert len(claimed) == len(set(claimed)) == 20
        for job_id in claimed:
            assert await env.queue.complete(job_id, {})


async def test_workers_hear_of_queued_jobs_and_the_bot_of_finished_ones(backend, tmp_path):
    """PostgreSQL tells listeners on commit (workers claim at once, the bot posts at once); SQLite has no
    notifications: both poll."""
    async with environment(backend, tmp_path) as env:
        work, finished = asyncio.Queue(), asyncio.Queue()
        stops = [await env.queue.listen(work.put_nowait, WORK_CHANNEL), await env.queue.listen(finished.put_nowait)]
        if backend != "postgres":
            assert stops == [None, None]
            return
        try:
            job, _ = await env.queue.enqueue(dataclasses.replace(spec(1), model="anime"))
            assert await asyncio.wait_for(work.get(), 10) == "anime"
            (job,) = await env.queue.claim("w", max_batch=1)
            await env.queue.complete(job.id, {})
            assert await asyncio.wait_for(finished.get(), 10) == f"final:{job.id}"
            assert work.empty()  # the two channels stay apart
        finally:
            for stop in stops:
                await stop()
