"""/imagine end to end: the real bot (bot.py, cogs, worker, tiny model) against the emulator, on SQLite (one
machine) and on the PostgreSQL service (the database of several)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import update

from gen_core.metadata import parse_parameters, read_png_parameters
from storage.models import Job
from tests.bot_fixtures import BotEnv, bot_config, is_result, result_job_id, running_bot
from tests.test_storage_support import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
async def bot_env(request, emulator, tmp_path, tiny_model_dir):
    url = await create_pg_database() if request.param == "postgres" else None
    try:
        config = bot_config(emulator, tmp_path / "data", tiny_model_dir, storage={"url": url} if url else {})
        async with running_bot(emulator, config) as env:
            yield env
    finally:
        if url:
            await drop_pg_database(url)


async def imagine(env: BotEnv, user, channel, **options):
    it = await env.emu.invoke(user, channel, "imagine", {"prompt": "a cat", **options})
    await it.wait_acked(3.0)
    return it


async def posted_job(env: BotEnv, message, timeout: float = 5.0):
    """The job behind a result message, once the bot has recorded that it posted it."""
    job_id = result_job_id(message)
    for _ in range(int(timeout / 0.05)):
        job = await env.services.queue.get(job_id)
        if job.posted_message_id:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} was never marked as posted")


class GatedEngine:
    """The real engine behind a gate the test opens: holds the GPU thread to build a queue."""

    def __init__(self, engine, fail: Exception | None = None) -> None:
        self.engine, self.fail = engine, fail
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_batch(self, requests, **kwargs):
        self.entered.set()
        self.gate.wait(30)
        self.batches.append(len(requests))
        if self.fail is not None:
            raise self.fail
        return self.engine.generate_batch(requests, **kwargs)


def gated(env: BotEnv, fail: Exception | None = None) -> GatedEngine:
    holder = GatedEngine(env.services.worker.engine, fail)
    env.services.worker.engine = holder
    return holder


async def test_imagine_end_to_end(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    before = await bot_env.balance(guild, alice)
    it = await imagine(bot_env, alice, channel, count=2, seed=1234, negative="blurry")
    status = await it.original(5)
    assert status.ephemeral
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    assert len(result.attachments) == 2
    data = await emu.read_attachment(result.attachments[0])
    params = parse_parameters(read_png_parameters(data))
    assert params["seed"] == 1234 and "a cat" in params["prompt"] and "blurry" in params["negative_prompt"]
    second = parse_parameters(read_png_parameters(await emu.read_attachment(result.attachments[1])))
    assert second["seed"] == 1235
    assert "seed 1234, 1235" in result.content
    labels = {b.label for b in result.buttons}
    assert {"V1 Subtle", "V1 Strong", "Remix 1", "U1", "V2 Subtle", "V2 Strong", "Remix 2", "U2"} <= labels
    await emu.wait_for_edit(result, lambda m: any(u.bot for u in m.reaction_users("🔄")), timeout=5)
    job = await posted_job(bot_env, result)
    assert await bot_env.balance(guild, alice) == before - job.cost
    assert job.posted_message_id == result.id
    assert emu.failures == []


async def test_progress_is_shown_then_replaced(bot_env: BotEnv):
    emu = bot_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    it = await imagine(bot_env, alice, channel, steps=6)
    status = await it.original(5)
    await emu.wait_for_edit(status, lambda m: "step" in (m.content or ""), timeout=20)
    await emu.wait_for_message(channel, is_result, timeout=30)
    await emu.wait_for_delete(status, timeout=10)


async def test_reroll_by_reaction_and_button_give_new_seeds(bot_env: BotEnv):
    emu = bot_env.emu
    alice, bob, channel = emu.user("alice"), emu.user("bob"), emu.guild().channel("general")
    await imagine(bot_env, alice, channel, seed=7)
    first = await emu.wait_for_message(channel, is_result, timeout=30)
    await emu.add_reaction(bob, first, "🔄")
    by_reaction = await emu.wait_for_message(channel, is_result, timeout=30)
    reroll = next(b for b in first.buttons if b.custom_id.endswith(":reroll"))
    await emu.click(alice, first, reroll.custom_id)
    by_button = await emu.wait_for_message(channel, is_result, timeout=30)
    seeds = set()
    for message in (first, by_reaction, by_button):
        seeds.add(parse_parameters(read_png_parameters(await emu.read_attachment(message.attachments[0])))["seed"])
    assert len(seeds) == 3
    assert f"<@{bob.id}>" in by_reaction.content  # the reroll belongs (and is charged) to who reacted
    assert emu.failures == []


async def test_variation_and_upscale(bot_env: BotEnv):
    emu = bot_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    await imagine(bot_env, alice, channel)
    first = await emu.wait_for_message(channel, is_result, timeout=30)
    size = first.attachments[0].width, first.attachments[0].height
    await emu.click(alice, first, next(b.custom_id for b in first.buttons if b.label == "Vary (Strong)"))
    variation = await emu.wait_for_message(channel, is_result, timeout=30)
    assert (variation.attachments[0].width, variation.attachments[0].height) == size
    await emu.click(alice, first, next(b.custom_id for b in first.buttons if b.label == "Upscale"))
    upscaled = await emu.wait_for_message(channel, is_result, timeout=30)
    assert (upscaled.attachments[0].width, upscaled.attachments[0].height) == (size[0] * 2, size[1] * 2)
    params = parse_parameters(read_png_parameters(await emu.read_attachment(upscaled.attachments[0])))
    assert float(params["denoising_strength"]) == pytest.approx(bot_env.config.generation.upscale_strength)


async def test_buttons_work_after_restart(bot_env: BotEnv):
    emu = bot_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    await imagine(bot_env, alice, channel)
    first = await emu.wait_for_message(channel, is_result, timeout=30)
    await bot_env.restart()
    reroll = next(b for b in first.buttons if b.custom_id.endswith(":reroll"))
    it = await emu.click(alice, first, reroll.custom_id)
    await it.wait_acked(3)
    again = await emu.wait_for_message(channel, is_result, timeout=30)
    assert again.id != first.id
    assert emu.failures == []


async def test_cancel_queued_and_running_jobs_refunds(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, channel = emu.guild(), emu.user("alice"), emu.guild().channel("general")
    gate = gated(bot_env)
    before = await bot_env.balance(guild, alice)
    running = await imagine(bot_env, alice, channel, steps=40)
    queued = await imagine(bot_env, alice, channel, steps=5)
    await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)
    for it in (queued, running):
        status = await it.original(5)
        await emu.wait_for_edit(status, lambda m: any(b.label == "Cancel" for b in m.buttons), timeout=5)
        click = await emu.click(alice, status, next(b.custom_id for b in status.buttons if b.label == "Cancel"))
        await click.wait_acked(3)
    gate.gate.set()
    await asyncio.sleep(1.0)
    assert await bot_env.balance(guild, alice) == before
    assert not [m for m in emu.channel_messages(channel) if is_result(m)]
    jobs = await bot_env.services.queue.list(user_id=alice.id, statuses=None)
    assert {j.status for j in jobs} == {"cancelled"}


async def test_insufficient_credits_refused_without_charge(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, channel = emu.guild(), emu.user("alice"), emu.guild().channel("general")
    await bot_env.services.ledger.set_balance(guild.id, alice.id, 0, actor_id=0, reason="test")
    it = await imagine(bot_env, alice, channel, count=4)
    reply = await it.original(5)
    assert reply.ephemeral and "you have 0" in reply.embeds[0]["description"]
    assert await bot_env.balance(guild, alice) == 0
    assert await bot_env.services.queue.list(user_id=alice.id, statuses=None) == []


async def test_generation_failure_refunds_with_clear_message(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, channel = emu.guild(), emu.user("alice"), emu.guild().channel("general")
    gate = gated(bot_env, fail=RuntimeError("CUDA out of memory"))
    gate.gate.set()
    before = await bot_env.balance(guild, alice)
    it = await imagine(bot_env, alice, channel)
    status = await it.original(5)
    await emu.wait_for_edit(status, lambda m: "failed" in (m.content or ""), timeout=20)
    assert "CUDA out of memory" in status.content and "refunded" in status.content
    assert await bot_env.balance(guild, alice) == before


async def test_result_posted_after_token_expiry(make_emulator, tmp_path, tiny_model_dir):
    emu = await make_emulator(token_lifetime=0.5)
    async with running_bot(emu, bot_config(emu, tmp_path / "data", tiny_model_dir)) as env:
        gate = gated(env)
        alice, channel = emu.user("alice"), emu.guild().channel("general")
        await imagine(env, alice, channel)
        await asyncio.sleep(1.0)  # the interaction token is dead now
        gate.gate.set()
        result = await emu.wait_for_message(channel, is_result, timeout=30)
        assert result.attachments


async def test_crash_before_posting_is_recovered_exactly_once(make_emulator, tmp_path, tiny_model_dir):
    emu = await make_emulator()
    config = bot_config(emu, tmp_path / "data", tiny_model_dir, worker={"lease_s": 1.0})
    async with running_bot(emu, config) as env:
        gate = gated(env)
        guild, alice, channel = emu.guild(), emu.user("alice"), emu.guild().channel("general")
        before = await env.balance(guild, alice)
        await imagine(env, alice, channel)
        await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)
        await env.crash()  # killed while the job runs: claimed, not finished, not posted
        gate.gate.set()
        await env.start()
        result = await emu.wait_for_message(channel, is_result, timeout=30)
        job = await posted_job(env, result)
        assert job.status == "done" and job.posted_message_id == result.id
        assert await env.balance(guild, alice) == before - job.cost
        # Killed between posting and recording the post: the restart finds the message instead of reposting,
        # however much was said in the channel since (its history is read from the job's finish on).
        for i in range(120):
            await emu.send_message(alice, channel, f"chatter {i}")
        async with env.services.db.write() as session:
            await session.execute(update(Job).where(Job.id == job.id).values(posted_message_id=None, answered_at=None))
        await env.restart()
        await asyncio.sleep(1.0)
        assert len([m for m in emu.channel_messages(channel) if is_result(m)]) == 1
        assert (await env.services.queue.get(job.id)).posted_message_id == result.id


async def test_many_users_at_once_are_acknowledged_and_served_fairly(bot_env: BotEnv):
    emu = bot_env.emu
    guild, channel = emu.guild(), emu.guild().channel("general")
    users = [emu.add_user(f"user{i}") for i in range(10)]
    for user in users:
        emu.add_member(guild, user)
    gate = gated(bot_env)
    await imagine(bot_env, emu.user("alice"), channel)  # keeps the worker busy
    await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)
    invocations = [emu.invoke(u, channel, "imagine", {"prompt": f"job {k} of {u.name}"}) for k in range(5) for u in users]
    its = await asyncio.gather(*invocations)
    await asyncio.gather(*(it.wait_acked(3.0) for it in its))
    replies = await asyncio.gather(*(it.original(30) for it in its))  # a deferred reply may take minutes
    assert all("queued" in (r.content or "") for r in replies), [r.content or r.embeds for r in replies][:3]
    assert emu.failures == []
    queue = bot_env.services.queue
    order = []
    for user in users:
        for job in await queue.list(user_id=user.id):
            order.append((await queue.position(job.id), user.id))
    order.sort()
    assert len(order) == 50
    first_ten = {uid for _, uid in order[:10]}
    assert len(first_ten) == 10  # one job of every user before anyone's second
    gate.gate.set()
    assert await bot_env.services.ledger.check_invariant() == []
