"""The credit ledger and the price formula."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from storage import CostPolicy, JobKind, LedgerKind, compute_cost, denoised_steps, settings
from tests.test_storage_support import BACKENDS, environment, spec


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


TOPUP = CostPolicy(start_balance=20, topup_floor=50, topup_period_s=3600, max_queued_per_user=50)


async def test_new_account_gets_start_balance_once(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        balances = await asyncio.gather(*(env.ledger.balance(1, 2) for _ in range(10)))
        assert set(balances) == {100}
        (entry,) = await env.ledger.entries(1, 2)
        assert (entry.kind, entry.delta, entry.balance_after, entry.idempotency_key) == (
            LedgerKind.START, 100, 100, f"start:{entry.account_id}",
        )  # fmt: skip


async def test_balances_are_per_guild(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        await env.ledger.grant(1, 9, 50, actor_id=1000, reason="event prize")
        await env.queue.enqueue(spec(9, guild_id=2, cost=30))
        assert await env.ledger.balance(1, 9) == 150
        assert await env.ledger.balance(2, 9) == 70
        assert await env.ledger.balance(3, 9) == 100
        assert [e.kind for e in await env.ledger.entries(2, 9)] == ["reserve", "start"]


async def test_grant_take_set_with_actor_and_reason(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        assert await env.ledger.grant(1, 2, 25, actor_id=77, reason="welcome") == 125
        assert await env.ledger.take(1, 2, 5, actor_id=77, reason="spam") == 120
        assert await env.ledger.take(1, 2, 500, actor_id=77) == 0  # never below zero
        assert await env.ledger.set_balance(1, 2, 42, actor_id=78, reason="reset") == 42
        entries = await env.ledger.entries(1, 2, limit=10)
        assert [(e.kind, e.delta, e.balance_after, e.actor_id) for e in entries] == [
            ("set", 42, 42, 78),
            ("take", -120, 0, 77),
            ("take", -5, 120, 77),
            ("grant", 25, 125, 77),
            ("start", 100, 100, None),
        ]
        assert entries[0].reason == "reset" and entries[3].reason == "welcome"
        assert [e.kind for e in await env.ledger.entries(1, 2, limit=2, offset=1)] == ["take", "take"]
        for bad in (0, -3):
            with pytest.raises(ValueError):
                await env.ledger.grant(1, 2, bad, actor_id=1)
            with pytest.raises(ValueError):
                await env.ledger.take(1, 2, bad, actor_id=1)
        with pytest.raises(ValueError):
            await env.ledger.set_balance(1, 2, -1, actor_id=1)


async def test_admin_operations_are_idempotent_with_a_key(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        results = await asyncio.gather(
            *(env.ledger.grant(1, 2, 10, actor_id=5, idempotency_key="cmd:123") for _ in range(5))
        )
        assert set(results) == {110}
        assert await env.ledger.grant(1, 2, 10, actor_id=5, idempotency_key="cmd:123") == 110
        assert await env.ledger.grant(1, 2, 10, actor_id=5) == 120  # no key: every call counts


async def test_periodic_topup_to_floor(backend, tmp_path):
    async with environment(backend, tmp_path, TOPUP) as env:
        start = env.clock.now
        assert await env.ledger.balance(1, 2) == 20
        assert await env.ledger.next_topup(1, 2) == start + timedelta(hours=1)
        env.clock.advance(3599)
        assert await env.ledger.balance(1, 2) == 20  # not due yet
        env.clock.advance(1)
        assert await env.ledger.balance(1, 2) == 50
        assert await env.ledger.balance(1, 2) == 50  # once per period
        assert await env.ledger.next_topup(1, 2) == env.clock.now + timedelta(hours=1)
        job, _ = await env.queue.enqueue(spec(2, guild_id=1, cost=45))
        await env.queue.claim("w")
        await env.queue.complete(job.id, {})
        env.clock.advance(1800)
        assert await env.ledger.balance(1, 2) == 5
        env.clock.advance(1800)
        # a due top-up is applied before the reservation that needs it
        await env.queue.enqueue(spec(2, guild_id=1, cost=30))
        assert await env.ledger.balance(1, 2) == 20
        kinds = [(e.kind, e.delta) for e in reversed(await env.ledger.entries(1, 2, limit=20))]
        assert kinds == [
            ("start", 20),
            ("topup", 30),
            ("reserve", -45),
            ("settle", 0),
            ("topup", 45),
            ("reserve", -30),
        ]


async def test_no_topup_above_floor_and_disabled_topups(backend, tmp_path):
    async with environment(backend, tmp_path, TOPUP) as env:
        await env.ledger.grant(1, 2, 100, actor_id=1)
        env.clock.advance(7200)
        assert await env.ledger.balance(1, 2) == 120
        await settings.set_guild_policy(env.db, 1, topup_period_s=0)
        assert await env.ledger.next_topup(1, 2) is None
        await env.ledger.set_balance(1, 2, 0, actor_id=1)
        env.clock.advance(7200)
        assert await env.ledger.balance(1, 2) == 0


async def test_invariant_detects_tampering(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1, guild_id=1, cost=5))
        assert await env.ledger.check_invariant() == []
        async with env.db.write() as s:
            await s.execute(text("UPDATE accounts SET balance = balance + 7"))
            await s.execute(text("UPDATE jobs SET status = 'done'"))
        problems = await env.ledger.check_invariant()
        assert any("balance 102 != sum of entries 95" in p for p in problems), problems
        assert any(f"job {job.id} is done" in p for p in problems), problems
        async with env.db.write() as s:  # put things back so the environment's own check passes
            await s.execute(text("UPDATE accounts SET balance = balance - 7"))
            await s.execute(text("UPDATE jobs SET status = 'queued'"))


async def test_balance_can_never_go_negative_in_sql(backend, tmp_path):
    from sqlalchemy.exc import IntegrityError

    async with environment(backend, tmp_path) as env:
        await env.ledger.balance(1, 2)
        with pytest.raises(IntegrityError):
            async with env.db.write() as s:
                await s.execute(text("UPDATE accounts SET balance = -1"))


# --- the price formula ----------------------------------------------------------------------------------------
def test_cost_reference_and_growth():
    p = CostPolicy()
    base = compute_cost("imagine", 512, 512, 28, policy=p)
    assert base == 4
    assert compute_cost("imagine", 512, 512, 28) == base  # default policy
    assert compute_cost("imagine", 1024, 1024, 28, policy=p) == 4 * base  # area
    assert compute_cost("imagine", 512, 512, 60, policy=p) > base  # steps
    assert compute_cost("imagine", 512, 512, 28, count=4, policy=p) == 4 * base  # images
    assert compute_cost(JobKind.MIX, 512, 512, 28, policy=p) == 1.5 * base  # kind multiplier
    assert compute_cost("unknown-kind", 512, 512, 28, policy=p) == base


def test_cost_img2img_scales_with_strength():
    full = compute_cost("edit", 768, 768, 50)
    assert compute_cost("edit", 768, 768, 50, strength=1.0) == full
    half = compute_cost("edit", 768, 768, 50, strength=0.5)
    low = compute_cost("edit", 768, 768, 50, strength=0.1)
    assert full > half > low >= 1


@pytest.mark.parametrize("steps", [1, 3, 10, 28, 50, 100, 150])
def test_cost_counts_the_steps_the_engine_denoises(steps):
    from gen_core.engine import effective_img2img_steps  # the engine's own rule (this test may import torch)

    for strength in [i / 100 for i in range(101)]:
        assert denoised_steps(steps, strength) == effective_img2img_steps(steps, strength), (steps, strength)
        work = compute_cost("imagine", 512, 512, steps, strength=strength, policy=CostPolicy(base=1000.0))
        assert work == compute_cost("imagine", 512, 512, effective_img2img_steps(steps, strength), policy=CostPolicy(base=1000.0))


def test_cost_is_at_least_one_and_monotonic():
    assert compute_cost("imagine", 64, 64, 1) == 1
    assert compute_cost("imagine", 64, 64, 1, strength=0.0) == 1
    prices = [compute_cost("imagine", 512, 512, s) for s in range(1, 151)]
    assert prices == sorted(prices)
    areas = [compute_cost("imagine", 64 * k, 512, 28) for k in range(1, 33)]
    assert areas == sorted(areas)


def test_cost_rejects_nonsense_and_uses_policy():
    for args in [(0, 512, 28), (512, -1, 28), (512, 512, 0)]:
        with pytest.raises(ValueError):
            compute_cost("imagine", *args)
    with pytest.raises(ValueError):
        compute_cost("imagine", 512, 512, 28, count=0)
    with pytest.raises(ValueError):
        compute_cost("edit", 512, 512, 28, strength=1.5)
    cheap = CostPolicy(base=1.0, multipliers={"imagine": 0.5})
    assert compute_cost("imagine", 512, 512, 28, policy=cheap) == 1
    assert compute_cost("imagine", 512, 512, 28, count=8, policy=cheap) == 4


def test_policy_overrides_merge_multipliers_and_ignore_unknown_keys():
    p = CostPolicy().with_overrides({"start_balance": 5, "multipliers": {"mix": 3}, "no_such_field": 1})
    assert p.start_balance == 5 and p.multipliers["mix"] == 3.0 and p.multipliers["imagine"] == 1.0
    assert CostPolicy().with_overrides(None) == CostPolicy()
    assert p.to_dict()["multipliers"]["mix"] == 3.0
    assert not CostPolicy(topup_period_s=0).topups_enabled
