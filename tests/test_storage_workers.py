"""The worker registry, heartbeats and durable announcements of the queue: a dead worker's jobs come back at
once, a live one's never; every done or failed job is announced exactly once, by its worker or — once that
worker is dead — by any live one; an unpostable result is refunded; images are recorded with the completion;
a top-up while credits are reserved mints nothing. Both databases; the ledger invariant is checked at the end."""

from __future__ import annotations

import pytest

from storage import CostPolicy, JobStatus
from tests.test_storage_support import BACKENDS, environment, spec


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def image(index: int) -> dict:
    return {"key": f"k{index}", "width": 64, "height": 64, "seed": index, "params": {}, "batch_index": index}


async def test_heartbeat_renews_the_worker_and_its_leases(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        q = env.queue
        await q.register_worker("w1", kind="embedded", host="h", pid=10, lease_s=5)
        job, _ = await q.enqueue(spec(1))
        await q.claim("w1", lease_s=5)
        env.clock.advance(4)
        assert await q.heartbeat("w1", 5) == [job.id]
        env.clock.advance(4)  # 8 s after the claim, 4 after the beat: alive
        assert await q.requeue_expired() == ([], [])
        assert [w.id for w in await q.workers()] == ["w1"]
        assert await q.heartbeat("nobody", 5) is None  # not registered: register again


async def test_dead_worker_jobs_come_back_at_once_and_a_live_worker_keeps_its_own(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        q = env.queue
        await q.register_worker("dead", kind="embedded", host="h", pid=10, lease_s=60)
        await q.register_worker("live", kind="remote", host="other", pid=10, lease_s=60)
        a, _ = await q.enqueue(spec(1, batch_key="a"))
        b, _ = await q.enqueue(spec(2, batch_key="b"))
        await q.claim("dead", max_batch=1, lease_s=60)
        await q.claim("live", max_batch=1, lease_s=60)
        requeued, failed = await q.requeue_expired(dead=["dead"])  # its process is gone: no waiting for the lease
        assert [j.id for j in requeued] == [a.id] and failed == []
        assert (await q.get(b.id)).status == JobStatus.RUNNING
        assert [w.id for w in await q.workers()] == ["live"]
        # a worker that stops beating is dead once its row expires, even if nobody can see its process
        env.clock.advance(61)
        requeued, _ = await q.requeue_expired()
        assert [j.id for j in requeued] == [b.id] and await q.workers() == []


async def test_announcements_are_owned_then_adopted_from_dead_workers(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        q = env.queue
        await q.register_worker("w1", kind="embedded", host="h", pid=1, lease_s=10)
        await q.register_worker("w2", kind="embedded", host="h", pid=2, lease_s=10)
        a, _ = await q.enqueue(spec(1))
        await q.claim("w1")
        assert await q.complete(a.id, {"images": []}, worker_id="w1")
        assert await q.due_announcements("w2") == []  # w1 is alive: its announcement is its own
        assert [j.id for j in await q.due_announcements("w1")] == [a.id]
        assert await q.postpone_announcement(a.id, 30) == 1
        assert await q.due_announcements("w1") == []  # backing off
        env.clock.advance(31)
        await q.heartbeat("w2", 10)
        adopted = await q.due_announcements("w2")  # w1 stopped beating: w2 takes over
        assert [(j.id, j.worker_id) for j in adopted] == [(a.id, "w2")]
        assert await q.mark_posted(a.id, 77) and not await q.mark_answered(a.id)
        assert await q.due_announcements("w2") == []


async def test_complete_records_images_only_for_the_holder_of_a_live_job(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        q = env.queue
        a, _ = await q.enqueue(spec(1, batch_key="a"))
        b, _ = await q.enqueue(spec(1, batch_key="b"))
        await q.claim("w1", max_batch=1)
        await q.claim("w1", max_batch=1)
        assert await q.cancel(b.id, actor_id=1)  # cancelled after its images were made, before completion
        assert not await q.complete(b.id, {"images": []}, images=[image(0)], worker_id="w1")
        assert not await q.complete(a.id, {"images": []}, images=[image(0)], worker_id="w2")  # not its job
        assert await q.complete(a.id, {"images": []}, images=[image(0), image(1)], worker_id="w1")
        history = await q.images.history(100, 1)
        assert sorted((i.job_id, i.batch_index) for i in history) == [(a.id, 0), (a.id, 1)]
        assert await env.ledger.balance(100, 1) == 99
        assert (await q.get(b.id)).answered_at is not None  # the cancel's reply is its answer


async def test_an_unpostable_result_is_refunded_once_and_leaves_the_history(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        q = env.queue
        a, _ = await q.enqueue(spec(1, cost=5))
        await q.claim("w1")
        assert await q.complete(a.id, {"images": []}, final_cost=3, images=[image(0)])
        assert await env.ledger.balance(100, 1) == 97
        assert await q.refund_unposted(a.id, "the channel is gone")
        assert not await q.refund_unposted(a.id, "again")
        job = await q.get(a.id)
        assert job.status == JobStatus.FAILED and job.result is not None and job.answered_at is None
        assert await env.ledger.balance(100, 1) == 100
        assert await q.images.history(100, 1) == []
        assert [j.id for j in await q.due_announcements("w1")] == [a.id]  # the DM is still owed


async def test_top_up_while_credits_are_reserved_then_cancel_mints_nothing(backend, tmp_path):
    policy = CostPolicy(start_balance=50, topup_floor=50, topup_period_s=60, max_queued_per_user=50)
    async with environment(backend, tmp_path, policy) as env:
        job, _ = await env.queue.enqueue(spec(1, cost=40))
        env.clock.advance(61)  # a top-up is due, and 40 credits are reserved
        assert await env.ledger.balance(100, 1) == 10
        assert await env.queue.cancel(job.id, actor_id=1)
        assert await env.ledger.balance(100, 1) == 50
        spent, _ = await env.queue.enqueue(spec(1, cost=45))
        await env.queue.claim("w")
        await env.queue.complete(spent.id, {})
        env.clock.advance(61)
        assert await env.ledger.balance(100, 1) == 50  # spent credits are topped up as before
