"""Promises the ledger keeps when Discord does not cooperate (the real bot on the emulator): a result that
cannot be posted ends as a refund and a DM (nothing public, nothing if DMs are closed); a 🔄 where the bot
cannot post is refused before charging; a reaction delivered twice charges once; a cancel in the window
after generation leaves no image of the refunded job in the history."""

from __future__ import annotations

import asyncio

import pytest

from discord_emulator import Perm
from tests.bot_fixtures import bot_config, running_bot
from tests.test_bot_imagine import gated, imagine, is_result, posted_job

FAST_RETRIES = {"announce_retries": 2, "announce_backoff_s": 0.05, "announce_backoff_max_s": 0.1, "lease_s": 3.0}


def dms(emu, user) -> list:
    return [m for m in emu.channel_messages(emu.dm_channel(user)) if m.author is emu.bot_user]


@pytest.mark.parametrize("trouble", ["channel deleted", "permission lost", "discord 5xx", "dms closed"])
async def test_an_unpostable_result_is_refunded_and_told_privately(make_emulator, tmp_path, tiny_model_dir, trouble):
    emu = await make_emulator()
    config = bot_config(emu, tmp_path / "data", tiny_model_dir, worker=FAST_RETRIES)
    async with running_bot(emu, config) as env:
        guild, alice = emu.guild(), emu.user("alice")
        channel = await emu.create_channel(guild, "doomed")
        before = await env.balance(guild, alice)
        gate = gated(env)
        await imagine(env, alice, channel)
        (job,) = await until(lambda: _jobs_of(env, alice), "the job")
        if trouble == "channel deleted":
            await emu.delete_channel(channel)
        elif trouble == "permission lost":
            await emu.set_permissions(channel, deny=Perm.SEND_MESSAGES | Perm.ATTACH_FILES)
        else:  # Discord answers 503 to every post in the channel (and alice may close her DMs)
            emu.inject_error(f"POST /channels/{channel.id}/messages", count=1000, status=503)
            alice.dms_open = trouble != "dms closed"
        gate.gate.set()
        done = await _wait_answered(env, job.id)
        assert done.status == "failed" and done.result is not None  # done, then refunded as unpostable
        assert await env.balance(guild, alice) == before
        assert await env.services.images.history(guild.id, alice.id) == []
        assert not [m for m in emu.channel_messages(channel) if m.author is emu.bot_user]  # nothing public
        notices = dms(emu, alice)
        if trouble == "dms closed":
            assert notices == []
        else:
            assert len(notices) == 1 and f"job #{job.id} could not be posted" in notices[0].content


async def until(check, what: str, timeout: float = 30.0):
    """The first truthy value of the coroutine function ``check``, polled (a deadline, not a timing)."""
    for _ in range(int(timeout / 0.05)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _wait_answered(env, job_id: int):
    async def answered():
        job = await env.services.queue.get(job_id)
        return job if job.answered_at is not None else None

    return await until(answered, f"job {job_id} to be answered")


async def test_reroll_where_the_bot_cannot_post_is_refused_before_charging(bot_env):
    emu = bot_env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    await imagine(bot_env, alice, channel)
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    await posted_job(bot_env, result)
    await emu.set_permissions(channel, deny=Perm.ATTACH_FILES)
    before = await bot_env.balance(guild, bob)
    public = len(emu.channel_messages(channel))
    await emu.add_reaction(bob, result, "🔄")
    notice = await emu.wait_for_message(emu.dm_channel(bob), timeout=10)
    assert "nothing was charged" in notice.content
    assert await bot_env.balance(guild, bob) == before
    assert len(await bot_env.services.queue.list(statuses=None)) == 1
    assert len(emu.channel_messages(channel)) == public


async def test_a_reaction_delivered_twice_charges_once(bot_env):
    emu = bot_env.emu
    guild, alice, bob, carol = emu.guild(), emu.user("alice"), emu.user("bob"), emu.user("carol")
    channel = guild.channel("general")
    await imagine(bot_env, alice, channel)
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    first = await posted_job(bot_env, result)
    before = await bot_env.balance(guild, bob)
    await emu.add_reaction(bob, result, "🔄")
    await until(lambda: _jobs_of(bot_env, bob), what="bob's reroll")
    await emu.redeliver_on_resume("MESSAGE_REACTION_ADD")  # the gateway drops; the resume replays bob's 🔄
    await emu.wait_until(lambda: emu.events_of("gateway.resume") or None, what="the resume")
    # reactions are handled in the order they arrive: once carol's is, the replayed one was too
    await emu.add_reaction(carol, result, "🔄")
    await until(lambda: _jobs_of(bot_env, carol), what="carol's reroll")
    (reroll,) = await _jobs_of(bot_env, bob)
    assert reroll.params["seed"] != first.params["seed"]
    assert await bot_env.balance(guild, bob) == before - reroll.cost
    # removing the reaction and adding it again is a new request
    await emu.remove_reaction(bob, result, "🔄")
    await emu.add_reaction(bob, result, "🔄")
    await until(lambda: _jobs_of(bot_env, bob, 2), what="bob's second reroll")


async def _jobs_of(env, user, at_least: int = 1):
    jobs = await env.services.queue.list(user_id=user.id, statuses=None)
    return jobs if len(jobs) >= at_least else None


async def test_cancel_after_generation_leaves_nothing_in_the_history(bot_env):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    before = await bot_env.balance(guild, alice)
    store = bot_env.services.worker.store
    put = store.put
    cancelled = []

    async def put_then_cancel(data: bytes) -> str:  # the images are made and stored; the owner cancels now
        key = await put(data)
        if not cancelled:
            (job,) = await bot_env.services.queue.list(user_id=alice.id)
            cancelled.append(await bot_env.services.jobs.cancel(job.id, alice.id))
        return key

    store.put = put_then_cancel
    await imagine(bot_env, alice, channel, count=2)
    await emu.wait_until(lambda: cancelled or None, timeout=30, what="the cancel")
    (job,) = await _jobs_of(bot_env, alice)
    await imagine(bot_env, emu.user("bob"), channel)  # one worker, one job at a time: alice's is behind it
    await emu.wait_for_message(channel, is_result, timeout=30)
    assert cancelled == [True] and (await bot_env.services.queue.get(job.id)).status == "cancelled"
    assert await bot_env.services.images.history(guild.id, alice.id) == []
    assert await bot_env.balance(guild, alice) == before
    assert [m.content for m in emu.channel_messages(channel) if is_result(m) and f"job #{job.id}" in m.content] == []
