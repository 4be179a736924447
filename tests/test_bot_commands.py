"""/imagine options and refusals, /cost, /credits, /history, reactions and cancel rights, end to end:
the real bot (bot.py, cogs, worker, SQLite, tiny model) against the Discord emulator."""

from __future__ import annotations

import asyncio
import re

import pytest

from discord_emulator import InvokeError, Perm
from gen_core.buckets import ACCEPTED_FORMS
from gen_core.metadata import parse_parameters, read_png_parameters
from tests.bot_fixtures import BotEnv, answer
from tests.test_bot_imagine import gated, imagine, is_result, posted_job


async def png_params(emu, attachment) -> dict:
    return parse_parameters(read_png_parameters(await emu.read_attachment(attachment)))


def description(message) -> str:
    assert message.embeds, f"expected an embed, got {message.content!r}"
    return message.embeds[0]["description"]


def field(message, name: str) -> str:
    return next(f["value"] for f in message.embeds[0].get("fields", []) if f["name"] == name)


async def refusal(it) -> str:
    """The text of an ephemeral refusal (an error embed saying nothing was charged)."""
    reply = await answer(it)
    assert reply.ephemeral, reply.content
    assert reply.embeds[0]["footer"]["text"] == "Nothing was charged."
    return description(reply)


async def assert_nothing_charged(env: BotEnv, guild, user, before: int) -> None:
    """No job, no charge: the balance is unchanged and the only ledger entry is the account's opening."""
    assert await env.balance(guild, user) == before
    assert await env.services.queue.list(user_id=user.id, statuses=None) == []
    assert [e.kind for e in await env.services.ledger.entries(guild.id, user.id, limit=50)] == ["start"]


def button(message, predicate):
    return next(b for b in message.buttons if predicate(b))


# -- permutations -----------------------------------------------------------------------------------------


async def test_permutations_make_one_job_per_prompt_and_charge_each(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    before = await bot_env.balance(guild, alice)
    it = await imagine(bot_env, alice, channel, prompt="a {red, blue} car")
    status = await it.original(5)
    assert status.ephemeral
    results = [await emu.wait_for_message(channel, is_result, timeout=30) for _ in range(2)]
    prompts = set()
    for message in results:
        prompt = (await png_params(emu, message.attachments[0]))["prompt"]
        assert "{" not in prompt
        prompts.add(prompt.rsplit(", ", 1)[-1])  # after the quality tags
    assert prompts == {"a red car", "a blue car"}
    jobs = [await posted_job(bot_env, m) for m in results]
    assert sorted(j.interaction_id for j in jobs) == [f"{it.id}:0", f"{it.id}:1"]  # both from the one /imagine
    assert all(j.cost > 0 for j in jobs)
    assert await bot_env.balance(guild, alice) == before - sum(j.cost for j in jobs)


async def test_too_many_permutations_refused_without_charge(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    limit = bot_env.config.limits.max_permutations
    assert 9 > limit
    before = await bot_env.balance(guild, alice)
    it = await imagine(bot_env, alice, guild.channel("general"), prompt="a {red, blue, green} {car, bus, bike}")
    text = await refusal(it)
    assert f"expands to 9 prompts; the limit is {limit}" in text
    await assert_nothing_charged(bot_env, guild, alice, before)


# -- /cost and /credits -----------------------------------------------------------------------------------


async def test_cost_quotes_what_imagine_charges_and_is_free(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    options = {"prompt": "a {small, big} cat", "steps": 4, "count": 2, "aspect": "portrait"}
    before = await bot_env.balance(guild, alice)
    it = await emu.invoke(alice, channel, "cost", options)
    reply = await it.original(5)
    assert reply.ephemeral
    quoted = int(re.search(r"would cost \*\*(\d+)\*\* credits", reply.content)[1])
    assert f"Your balance: {before}" in reply.content and reply.content.startswith("💰 2 job(s) of 2 image(s)")
    assert await bot_env.balance(guild, alice) == before  # a quote costs nothing
    assert await bot_env.services.queue.list(user_id=alice.id, statuses=None) == []

    await imagine(bot_env, alice, channel, **options)
    results = [await emu.wait_for_message(channel, is_result, timeout=30) for _ in range(2)]
    jobs = [await posted_job(bot_env, m) for m in results]
    assert sum(j.cost for j in jobs) == quoted
    assert await bot_env.balance(guild, alice) == before - quoted


async def test_credits_shows_balance_and_the_reserve_of_an_imagine(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    await imagine(bot_env, alice, channel)
    job = await posted_job(bot_env, await emu.wait_for_message(channel, is_result, timeout=30))
    balance = await bot_env.balance(guild, alice)
    it = await emu.invoke(alice, channel, "credits")
    reply = await it.original(5)
    assert reply.ephemeral and not reply.visible_to(emu.user("bob"))
    assert f"**{balance}** credits" in description(reply)
    recent = field(reply, "Recent")
    assert f"{-job.cost:+6d}` reserve · job #{job.id}" in recent
    assert "start" in recent  # the opening balance is listed too
    assert await bot_env.balance(guild, alice) == balance
    floor = bot_env.config.credits.topup_floor
    assert f"below {floor} are raised" in field(reply, "Top-up")  # above the floor: no top-up promised


async def test_credits_below_the_floor_tells_when_the_top_up_comes(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, channel = emu.guild(), emu.user("alice"), emu.guild().channel("general")
    await bot_env.services.ledger.set_balance(guild.id, alice.id, 3, actor_id=0, reason="test")
    reply = await (await emu.invoke(alice, channel, "credits")).original(5)
    floor = bot_env.config.credits.topup_floor
    assert f"to {floor} credits <t:" in field(reply, "Top-up")


# -- /history ----------------------------------------------------------------------------------------------


async def test_history_lists_results_pages_and_rerolls(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    await imagine(bot_env, alice, channel, prompt="first picture", count=2)
    first = await posted_job(bot_env, await emu.wait_for_message(channel, is_result, timeout=30))
    await imagine(bot_env, alice, channel, prompt="second picture", count=4)
    second = await posted_job(bot_env, await emu.wait_for_message(channel, is_result, timeout=30))

    it = await emu.invoke(alice, channel, "history")
    page1 = await it.original(10)
    assert page1.ephemeral and page1.content == "Your images, page 1"
    assert len(page1.embeds) == len(page1.attachments) == 5  # 6 images, 5 a page, newest first
    assert [e["title"].split(" ·")[0] for e in page1.embeds] == [f"#{second.id}"] * 4 + [f"#{first.id}"]
    assert page1.embeds[0]["description"] == "second picture"
    assert all(e["thumbnail"]["url"].startswith("attachment://thumb") for e in page1.embeds)
    assert all(a.width <= 128 and a.height <= 128 for a in page1.attachments)
    rerolls = {b.custom_id for b in page1.buttons if b.custom_id.endswith(":reroll")}
    assert rerolls == {f"job:{second.id}:reroll", f"job:{first.id}:reroll"}
    assert [b.label for b in page1.buttons if b.custom_id.startswith("history:")] == ["▶"]
    next_id = button(page1, lambda b: b.label == "▶").custom_id

    # Someone else can't page through it: the page is ephemeral, so Discord doesn't even show it to them...
    with pytest.raises(InvokeError, match="cannot see"):
        await emu.click(bob, page1, next_id)
    # ...and were the button in front of them anyway, the bot refuses it.
    page1.ephemeral_for, owner = None, page1.ephemeral_for
    try:
        theirs = await emu.click(bob, page1, next_id)
    finally:
        page1.ephemeral_for = owner
    assert "someone else's history" in await refusal(theirs)
    assert page1.content == "Your images, page 1"

    paging = await emu.click(alice, page1, next_id)
    await paging.wait_acked(3)
    await emu.wait_for_edit(page1, lambda m: m.content == "Your images, page 2", timeout=10)
    assert len(page1.embeds) == len(page1.attachments) == 1
    assert page1.embeds[0]["title"].startswith(f"#{first.id}")
    assert [b.label for b in page1.buttons if b.custom_id.startswith("history:")] == ["◀"]

    reroll = await emu.click(alice, page1, f"job:{first.id}:reroll")
    await reroll.wait_acked(3)
    again = await emu.wait_for_message(channel, is_result, timeout=30)
    job = await posted_job(bot_env, again)
    assert job.id not in (first.id, second.id) and job.params["user_prompt"] == "first picture"
    assert job.params["seed"] != first.params["seed"]
    assert emu.failures == []


# -- refusals ----------------------------------------------------------------------------------------------


async def test_invalid_options_refused_ephemerally_without_charge(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    limits = bot_env.config.limits
    before = await bot_env.balance(guild, alice)

    text = await refusal(await imagine(bot_env, alice, channel, prompt=" ".join(["cat"] * 300)))
    n, limit = map(int, re.search(r"That prompt is at least (\d+) tokens; the limit is (\d+)", text).groups())
    assert limit == 75 * bot_env.config.model.max_chunks and n > limit

    text = await refusal(await imagine(bot_env, alice, channel, steps=limits.max_steps + 1))
    assert f"between 1 and {limits.max_steps}" in text and f"you asked for {limits.max_steps + 1}" in text

    text = await refusal(await imagine(bot_env, alice, channel, aspect="banana"))
    assert "'banana'" in text and ACCEPTED_FORMS in text

    await assert_nothing_charged(bot_env, guild, alice, before)
    assert emu.failures == []


async def test_channel_without_attach_files_refused_before_charging(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("art")
    await emu.set_permissions(channel, deny=Perm.ATTACH_FILES)
    before = await bot_env.balance(guild, alice)
    text = await refusal(await imagine(bot_env, alice, channel))
    assert "Attach Files" in text
    await assert_nothing_charged(bot_env, guild, alice, before)
    assert not [m for m in emu.channel_messages(channel) if not m.ephemeral]


async def test_imagine_in_dm_refused(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    # /imagine is a global command that discord.py registers as usable in DMs, so Discord delivers it: the
    # bot must answer with a refusal (credits and results belong to a server).
    assert emu.commands.get("imagine")["dm_permission"] is True
    it = await imagine(bot_env, alice, emu.dm_channel(alice))
    assert "servers, not in DMs" in await refusal(it)
    assert await bot_env.services.queue.list(user_id=alice.id, statuses=None) == []
    assert await bot_env.services.ledger.entries(guild.id, alice.id) == []  # no account was even opened
    assert emu.failures == []


# -- reactions ---------------------------------------------------------------------------------------------


async def test_reactions_delete_favourite_and_dm(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    await imagine(bot_env, alice, channel, count=2, seed=99)
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    job = await posted_job(bot_env, result)
    keys = {img["key"] for img in job.result["images"]}

    await emu.add_reaction(bob, result, "❌")  # not the requester, not a moderator: ignored
    await emu.add_reaction(bob, result, "⭐")
    for _ in range(200):  # both images are favourited; under load the second may lag the first
        if len(await bot_env.services.images.favourites(bob.id, guild.id)) == len(keys):
            break
        await asyncio.sleep(0.05)
    assert {img.key for img in await bot_env.services.images.favourites(bob.id, guild.id)} == keys
    assert await bot_env.services.images.favourites(alice.id, guild.id) == []

    await emu.add_reaction(alice, result, "✉️")
    dm = await emu.wait_for_message(emu.dm_channel(alice), timeout=10)
    assert f"**Job #{job.id}**" in dm.content
    assert "Seed: 99," in dm.content and "Seed: 100," in dm.content
    assert job.params["user_prompt"] in dm.content
    assert not result.deleted  # bob's ❌ was handled long ago (his ⭐ after it already is)

    await emu.add_reaction(alice, result, "❌")
    await emu.wait_for_delete(result, timeout=10)
    assert emu.failures == []


# -- cancel rights -----------------------------------------------------------------------------------------


async def test_only_the_requester_can_cancel_a_queued_job(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    await imagine(bot_env, alice, channel, seed=5)
    first = await emu.wait_for_message(channel, is_result, timeout=30)
    gate = gated(bot_env)
    await imagine(bot_env, alice, channel, steps=20)  # holds the worker
    await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)
    before = await bot_env.balance(guild, alice)

    # A reroll by reaction is announced in a public channel message, with the job's Cancel button.
    await emu.add_reaction(alice, first, "🔄")
    status = await emu.wait_for_message(channel, lambda m: "reroll of job" in (m.content or ""), timeout=10)
    await emu.wait_for_edit(status, lambda m: any(b.label == "Cancel" for b in m.buttons), timeout=10)
    cancel = button(status, lambda b: b.label == "Cancel").custom_id
    job_id = int(cancel.split(":")[1])
    queued = await bot_env.services.queue.get(job_id)
    assert queued.status == "queued" and queued.user_id == alice.id
    assert await bot_env.balance(guild, alice) == before - queued.cost

    text = await refusal(await emu.click(bob, status, cancel))
    assert "Only the person who asked for this job or a moderator" in text
    assert (await bot_env.services.queue.get(job_id)).status == "queued"
    assert await bot_env.balance(guild, bob) == bot_env.config.credits.start_balance

    mine = await emu.click(alice, status, cancel)
    await mine.wait_acked(3)
    await emu.wait_for_edit(status, lambda m: "cancelled" in (m.content or ""), timeout=10)
    assert f"Job #{job_id} cancelled; {queued.cost} credits refunded" in status.content and not status.buttons
    assert (await bot_env.services.queue.get(job_id)).status == "cancelled"
    assert await bot_env.balance(guild, alice) == before
    gate.gate.set()
    assert emu.failures == []
