"""/admin and the server rules end to end: the real bot (bot.py, cogs, worker, SQLite, tiny model) against the
Discord emulator — permissions re-checked by the bot, credits, limits, bans, channels, NSFW gating, banned
words, the server negative, queue control, module approvals, the audit log and guild isolation."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image, ImageStat

from discord_emulator import InvokeError
from gen_core.metadata import parse_parameters, read_png_parameters
from storage import CostPolicy, ModuleStatus, compute_cost, hypernetworks, moderation
from tests.bot_fixtures import BotEnv, answer
from tests.test_bot_imagine import gated, imagine, is_result, posted_job

MANAGE_GUILD = 1 << 5



def text_of(message) -> str:
    if message.embeds:
        embed = message.embeds[0]
        return f"{embed.get('title', '')}\n{embed.get('description', '')}"
    return message.content or ""


async def admin(env: BotEnv, actor, channel, command: str, /, **options) -> str:
    """`actor` runs `/admin <command>`; the text of the bot's ephemeral answer."""
    it = await env.emu.invoke(actor, channel, f"admin {command}", options)
    reply = await it.original(10)
    assert reply.ephemeral
    return text_of(reply)


async def refusal(it) -> str:
    reply = await answer(it)
    assert reply.ephemeral and reply.embeds, reply.content
    return reply.embeds[0]["description"]


async def assert_nothing_queued(env: BotEnv, guild, user, before: int) -> None:
    assert await env.balance(guild, user) == before
    assert await env.services.queue.list(guild_id=guild.id, user_id=user.id, statuses=None) == []


async def jobs_of(env: BotEnv, guild, user, n: int) -> list:
    """Wait until `user` has `n` waiting or running jobs here (a deferred command enqueues a moment later)."""
    for _ in range(200):
        jobs = await env.services.queue.list(guild_id=guild.id, user_id=user.id)
        if len(jobs) >= n:
            return jobs
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user.name} never had {n} jobs")


async def audit_actions(env: BotEnv, guild) -> list[str]:
    return [e.action for e in await moderation.audit_entries(env.services.db, guild.id, limit=100)]


def required_options(emu, command: str, values: dict) -> dict:
    return {o["name"]: values[o["name"]] for o in emu.commands.get(command).get("options") or [] if o.get("required")}


# -- permissions ------------------------------------------------------------------------------------------


async def test_members_without_manage_server_cannot_run_any_admin_command(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, bob, mod = emu.guild(), emu.user("alice"), emu.user("bob"), emu.user("mod")
    channel = guild.channel("general")
    root = emu.commands.find("admin", None)
    assert int(root["default_member_permissions"]) == MANAGE_GUILD and root.get("dm_permission") is False
    with pytest.raises(InvokeError):  # Discord hides it from alice...
        await emu.invoke(alice, channel, "admin credits grant", {"user": bob, "amount": 5})
    root["default_member_permissions"] = None  # ...until the server owner shows it to everyone
    balance = await bot_env.balance(guild, bob)
    values = {"user": bob, "member": bob, "amount": 5, "channel": channel, "word": "cat", "job": 1, "name": "style"}
    names = [n for n in emu.commands.names(guild) if n.startswith("admin ")]
    assert len(names) >= 20
    for name in names:
        it = await emu.invoke(alice, channel, name, required_options(emu, name, values))
        assert "Manage Server" in await refusal(it), name
    assert await bot_env.balance(guild, bob) == balance
    assert await audit_actions(bot_env, guild) == []
    assert f"→ **{balance + 5}**" in await admin(bot_env, mod, channel, "credits grant", user=bob, amount=5)  # mod has it
    assert emu.failures == []


# -- credits ------------------------------------------------------------------------------------------------


async def test_grant_take_set_are_ledger_entries_with_the_admin(bot_env: BotEnv):
    emu = bot_env.emu
    guild, bob, mod = emu.guild(), emu.user("bob"), emu.user("mod")
    channel = guild.channel("general")
    start = await bot_env.balance(guild, bob)
    assert f"→ **{start + 50}**" in await admin(bot_env, mod, channel, "credits grant", user=bob, amount=50, reason="contest")
    assert f"→ **{start + 30}**" in await admin(bot_env, mod, channel, "credits take", user=bob, amount=20)
    assert "→ **7**" in await admin(bot_env, mod, channel, "credits set", user=bob, amount=7)
    assert "→ **0**" in await admin(bot_env, mod, channel, "credits take", user=bob, amount=100)
    entries = await bot_env.services.ledger.entries(guild.id, bob.id, limit=10)
    assert [e.kind for e in entries][:4] == ["take", "set", "take", "grant"]
    assert {e.actor_id for e in entries[:4]} == {mod.id}
    assert entries[3].reason == "contest" and entries[3].delta == 50
    assert await bot_env.balance(guild, bob) == 0
    assert await bot_env.services.ledger.check_invariant() == []
    assert (await audit_actions(bot_env, guild))[:4] == ["credits.take", "credits.set", "credits.take", "credits.grant"]


async def test_credit_policy_changes_prices_and_start_balance(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, carol, mod = emu.guild(), emu.user("alice"), emu.user("carol"), emu.user("mod")
    channel = guild.channel("general")
    it = await emu.invoke(alice, channel, "cost", {"prompt": "a cat", "steps": 50})
    price = int((await it.original(5)).content.split("**")[1])
    assert price == compute_cost("imagine", 256, 256, 50)
    text = await admin(bot_env, mod, channel, "credits policy", start_balance=42, kind="imagine", multiplier=3.0)
    assert "Start balance **42**" in text and "imagine ×3" in text
    it = await emu.invoke(alice, channel, "cost", {"prompt": "a cat", "steps": 50})
    tripled = compute_cost("imagine", 256, 256, 50, policy=CostPolicy(multipliers={"imagine": 3.0}))
    assert int((await it.original(5)).content.split("**")[1]) == tripled > 2 * price
    assert await bot_env.balance(guild, carol) == 42
    it = await emu.invoke(mod, channel, "admin credits policy", {"kind": "imagine"})
    assert "both `kind` and `multiplier`" in await refusal(it)


# -- limits ---------------------------------------------------------------------------------------------------


async def test_limits_refuse_over_limit_requests_without_charge(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    general, art = guild.channel("general"), guild.channel("art")
    text = await admin(bot_env, mod, general, "limits", max_steps=4, max_area=256 * 256)
    assert "`max_steps` = 4" in text and "`max_area` = 65536" in text
    text = await admin(bot_env, mod, general, "limits", channel=art, max_count=1)
    assert "`max_count` = 1" in text and "`max_steps` = 4" in text
    before = await bot_env.balance(guild, alice)

    text = await refusal(await imagine(bot_env, alice, general, steps=5))
    assert "at most 4 steps" in text and "you asked for 5" in text
    text = await refusal(await imagine(bot_env, alice, general, steps=3, aspect="256x384"))
    assert "256×384 is larger than this server allows" in text
    text = await refusal(await imagine(bot_env, alice, art, steps=3, count=2))
    assert "at most 1 images per request" in text
    await assert_nothing_queued(bot_env, guild, alice, before)

    it = await emu.invoke(mod, general, "admin limits", {"channel": art, "max_queued": 3})
    assert "whole server" in await refusal(it)
    # an override never goes past the bot's own limits (config.toml): nothing is stored
    it = await emu.invoke(mod, general, "admin limits", {"max_train_steps": 1_000_000})
    assert "`max_train_steps` can be at most 2000" in await refusal(it)
    it = await emu.invoke(mod, general, "admin limits", {"channel": art, "max_area": 512 * 512})
    assert f"`max_area` can be at most {256 * 384}" in await refusal(it)
    rules = await bot_env.services.rules.in_channel(guild.id, art.id)
    assert rules.limits.max_train_steps == 2000 and rules.limits.max_area == 256 * 256
    assert "`max_queued` = 1" in await admin(bot_env, mod, general, "limits", max_queued=1)
    gate = gated(bot_env)
    await imagine(bot_env, alice, general, steps=3)
    await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)
    await imagine(bot_env, alice, general, steps=3)  # waits: the one allowed
    await jobs_of(bot_env, guild, alice, 2)
    text = await refusal(await imagine(bot_env, alice, general, steps=3))
    assert "already have 1 jobs waiting" in text
    gate.gate.set()
    assert "`max_steps` = 50" in await admin(bot_env, mod, general, "limits", reset=True)
    assert "limits" in await audit_actions(bot_env, guild)


# -- bans -----------------------------------------------------------------------------------------------------


async def test_ban_cancels_and_refunds_queued_jobs_and_refuses_commands_and_reactions(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, bob, mod = emu.guild(), emu.user("alice"), emu.user("bob"), emu.user("mod")
    channel = guild.channel("general")
    await imagine(bot_env, bob, channel)
    bobs = await emu.wait_for_message(channel, is_result, timeout=30)
    gate = gated(bot_env)
    before = await bot_env.balance(guild, alice)
    await imagine(bot_env, alice, channel, steps=3)
    await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)
    await imagine(bot_env, alice, channel, steps=3)
    await jobs_of(bot_env, guild, alice, 2)
    assert await bot_env.balance(guild, alice) < before

    text = await admin(bot_env, mod, channel, "ban", user=alice, reason="spam")
    assert "2 job(s) cancelled" in text
    gate.gate.set()
    await emu.wait_until(lambda: not bot_env.services.worker.running_jobs, 10, "the running job stops")
    assert await bot_env.balance(guild, alice) == before
    jobs = await bot_env.services.queue.list(guild_id=guild.id, user_id=alice.id, statuses=None)
    assert {j.status for j in jobs} == {"cancelled"}

    text = await refusal(await imagine(bot_env, alice, channel))
    assert "banned from using this bot on this server (spam)" in text
    assert "(spam)" in await refusal(await emu.invoke(alice, channel, "credits"))  # every command, not just generation
    assert "Your credits" in text_of(await (await emu.invoke(bob, channel, "credits")).original(5))
    # autocomplete is never checked (it reads no rules and starts nothing): the command itself is refused
    aspects = await emu.autocomplete(alice, channel, "imagine", {"prompt": "x", "aspect": "portrait"}, focused="aspect")
    assert aspects and all("portrait" in c["name"].lower() for c in aspects)
    await emu.add_reaction(alice, bobs, "🔄")
    await asyncio.sleep(0.5)
    assert await bot_env.services.queue.list(guild_id=guild.id, user_id=alice.id) == []
    assert f"<@{alice.id}>" in await admin(bot_env, mod, channel, "bans")
    await bot_env.restart()  # bans live in SQL
    assert "(spam)" in await refusal(await imagine(bot_env, alice, channel))

    assert "may use the bot again" in await admin(bot_env, mod, channel, "unban", user=alice)
    await bot_env.services.check_access(guild_id=guild.id, user_id=alice.id, channel_id=channel.id)  # no AccessDenied
    it = await emu.invoke(mod, channel, "admin unban", {"user": alice})
    assert "is not banned" in await refusal(it)
    assert (await audit_actions(bot_env, guild))[:2] == ["unban", "ban"]
    assert not [m for m in emu.channel_messages(channel) if is_result(m) and m.id != bobs.id]


# -- channels ---------------------------------------------------------------------------------------------------


async def test_channel_deny_and_allow_list(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    general, art, nsfw = guild.channel("general"), guild.channel("art"), guild.channel("nsfw")
    before = await bot_env.balance(guild, alice)
    assert f"Denied: <#{art.id}>" in await admin(bot_env, mod, general, "channels deny", channel=art)
    assert "turned the bot off in this channel" in await refusal(await imagine(bot_env, alice, art))
    text = await admin(bot_env, mod, general, "channels allow", channel=general)
    assert f"Allowed only in: <#{general.id}>" in text
    assert f"works only in <#{general.id}>" in await refusal(await imagine(bot_env, alice, nsfw))
    await assert_nothing_queued(bot_env, guild, alice, before)
    await admin(bot_env, mod, general, "channels reset", channel=general)
    text = await admin(bot_env, mod, general, "channels list")
    assert "Allowed everywhere" in text and f"<#{art.id}>" in text
    await bot_env.services.check_access(guild_id=guild.id, user_id=alice.id, channel_id=nsfw.id)  # no AccessDenied
    assert (await audit_actions(bot_env, guild))[:3] == ["channels.reset", "channels.allow", "channels.deny"]


# -- NSFW ---------------------------------------------------------------------------------------------------------


async def png_params(emu, attachment) -> dict:
    return parse_parameters(read_png_parameters(await emu.read_attachment(attachment)))


def contrast(png: bytes) -> float:
    return sum(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("RGB")).stddev) / 3


async def test_nsfw_only_in_age_restricted_channels_with_negative_and_image_check(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    general, nsfw = guild.channel("general"), guild.channel("nsfw")
    checked = []

    def flag_everything(image: Image.Image) -> bool:
        checked.append(image.size)
        return True

    bot_env.services.rules.safety_check = flag_everything
    await admin(bot_env, emu.user("mod"), general, "nsfw", image_check=True)  # the test config turns checks off
    before = await bot_env.balance(guild, alice)
    text = await refusal(await imagine(bot_env, alice, general, prompt="a NUDE statue"))
    assert "`nude` is NSFW content" in text and "age-restricted" in text
    await assert_nothing_queued(bot_env, guild, alice, before)

    await imagine(bot_env, alice, nsfw, prompt="a nude statue", seed=3)
    free = await emu.wait_for_message(nsfw, is_result, timeout=30)
    job = await posted_job(bot_env, free)
    assert "nsfw" not in job.params["negative"] and checked == []

    await imagine(bot_env, alice, general, prompt="a statue", seed=3)
    screened = await emu.wait_for_message(general, is_result, timeout=30)
    job = await posted_job(bot_env, screened)
    assert job.params["negative"].endswith(bot_env.config.moderation.sfw_negative)
    assert checked == [(256, 256)]
    sharp = contrast(await emu.read_attachment(free.attachments[0]))
    blurred = contrast(await emu.read_attachment(screened.attachments[0]))
    assert blurred < sharp / 4
    assert (await png_params(emu, screened.attachments[0])).get("Safety check") == "blurred"
    assert "Safety check" not in await png_params(emu, free.attachments[0])

    mod = emu.user("mod")
    text = await admin(bot_env, mod, general, "nsfw", terms="gore, blood", image_check=False)
    assert "gore, blood" in text and "off (flag_everything is active)" in text
    assert "`blood` is NSFW" in await refusal(await imagine(bot_env, alice, general, prompt="blood moon"))


# -- banned words and the server negative --------------------------------------------------------------------------


async def test_banned_words_regexes_and_server_negative(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    channel = guild.channel("general")
    await admin(bot_env, mod, channel, "words add", word="Badword")
    await admin(bot_env, mod, channel, "words add", word="re:sp[a4]m+")
    assert "lower case" in await refusal(await emu.invoke(mod, channel, "admin words add", {"word": "re:\\W"}))
    assert "not a valid regex" in await refusal(await emu.invoke(mod, channel, "admin words add", {"word": "re:("}))
    assert "already banned" in await refusal(await emu.invoke(mod, channel, "admin words add", {"word": "badword"}))
    assert "`badword`" in await admin(bot_env, mod, channel, "words list")
    before = await bot_env.balance(guild, alice)
    text = await refusal(await imagine(bot_env, alice, channel, prompt="a BADWORD cat"))
    assert "`badword`, which is banned on this server" in text
    assert "`sp[a4]m+`" in await refusal(await imagine(bot_env, alice, channel, prompt="cans of Sp4mmm"))
    await assert_nothing_queued(bot_env, guild, alice, before)

    assert "`ugly hands`" in await admin(bot_env, mod, channel, "negative", prompt="ugly hands")
    await admin(bot_env, mod, channel, "words remove", word="badword")
    await imagine(bot_env, alice, channel, prompt="a badword cat, badwordy", negative="dogs")
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    job = await posted_job(bot_env, result)
    assert "dogs" in job.params["negative"] and "ugly hands" in job.params["negative"]
    # a reroll keeps one copy of the server's negatives
    await emu.click(alice, result, next(b.custom_id for b in result.buttons if b.custom_id.endswith(":reroll")))
    again = await posted_job(bot_env, await emu.wait_for_message(channel, is_result, timeout=30))
    assert again.params["negative"].count("ugly hands") == 1
    assert "none" in await admin(bot_env, mod, channel, "negative", clear=True)
    assert (await audit_actions(bot_env, guild))[:5] == ["negative", "words.remove", "negative", "words.add", "words.add"]


# -- queue -----------------------------------------------------------------------------------------------------------


async def test_pause_stops_claiming_resume_continues_and_admin_cancel_refunds(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, bob, mod = emu.guild(), emu.user("alice"), emu.user("bob"), emu.user("mod")
    channel = guild.channel("general")
    assert "paused" in await admin(bot_env, mod, channel, "queue pause")
    before = await bot_env.balance(guild, bob)
    await imagine(bot_env, alice, channel)
    await imagine(bot_env, bob, channel)
    await asyncio.sleep(1.0)  # 20 polls of the worker
    jobs = await bot_env.services.queue.list(guild_id=guild.id)
    assert [j.status for j in jobs] == ["queued", "queued"]
    text = await admin(bot_env, mod, channel, "queue view")
    assert "**Paused**" in text and f"<@{alice.id}>" in text and "#1 in line" in text and "#2 in line" in text
    bobs = next(j for j in jobs if j.user_id == bob.id)
    assert "credits refunded" in await admin(bot_env, mod, channel, "queue cancel", job=bobs.id)
    assert await bot_env.balance(guild, bob) == before
    assert "no job #999" in await refusal(await emu.invoke(mod, channel, "admin queue cancel", {"job": 999}))

    await admin(bot_env, mod, channel, "queue resume")
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    assert f"<@{alice.id}>" in result.content
    assert (await audit_actions(bot_env, guild))[:3] == ["queue.resume", "queue.cancel", "queue.pause"]


# -- modules -----------------------------------------------------------------------------------------------------------


async def test_approving_a_shared_module_makes_it_visible_to_others(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, bob, mod = emu.guild(), emu.user("alice"), emu.user("bob"), emu.user("mod")
    channel = guild.channel("general")
    db = bot_env.services.db
    for name in ("anime", "grim"):
        await hypernetworks.register(db, guild.id, bob.id, name, f"/m/{name}.safetensors", "0" * 64, shared=True, status="pending")
    await hypernetworks.register(db, guild.id, bob.id, "secret", "/m/secret.safetensors", "1" * 64)
    assert await hypernetworks.visible(db, guild.id, alice.id) == []
    text = await admin(bot_env, mod, channel, "modules pending")
    assert "`anime`" in text and "`grim`" in text and "secret" not in text
    choices = await emu.autocomplete(mod, channel, "admin modules approve", {"name": "an"}, focused="name")
    assert [c["value"] for c in choices] == ["anime"]
    emu.commands.find("admin", None)["default_member_permissions"] = None  # shown to all: still no names for alice
    assert await emu.autocomplete(alice, channel, "admin modules approve", {"name": "an"}, focused="name") == []

    assert "now usable by everyone" in await admin(bot_env, mod, channel, "modules approve", name="anime")
    assert "rejected" in await admin(bot_env, mod, channel, "modules reject", name="grim")
    assert [m.name for m in await hypernetworks.visible(db, guild.id, alice.id)] == ["anime"]
    assert (await hypernetworks.get(db, guild.id, "grim")).status == ModuleStatus.REJECTED
    assert "not shared" in await refusal(await emu.invoke(mod, channel, "admin modules approve", {"name": "secret"}))
    assert "no module `nope`" in await refusal(await emu.invoke(mod, channel, "admin modules approve", {"name": "nope"}))
    assert "No modules wait" in await admin(bot_env, mod, channel, "modules pending")
    assert (await audit_actions(bot_env, guild))[:2] == ["modules.reject", "modules.approve"]


# -- audit log ------------------------------------------------------------------------------------------------------------


async def test_audit_log_records_who_what_when_paged(bot_env: BotEnv):
    emu = bot_env.emu
    guild, bob, mod, admin_user = emu.guild(), emu.user("bob"), emu.user("mod"), emu.user("admin")
    channel = guild.channel("general")
    for i in range(11):
        await admin(bot_env, mod, channel, "credits grant", user=bob, amount=i + 1)
    await admin(bot_env, admin_user, channel, "words add", word="spam")
    first = await admin(bot_env, admin_user, channel, "audit")
    lines = first.splitlines()[1:]
    assert len(lines) == 10
    assert f"<@{admin_user.id}> **words.add**" in lines[0] and "word=spam" in lines[0]
    assert f"<@{mod.id}> **credits.grant** → <@{bob.id}>" in lines[1] and "amount=11" in lines[1]
    assert "<t:" in lines[0]  # when, as a Discord timestamp
    second = await admin(bot_env, admin_user, channel, "audit", page=2)
    assert second.count("**credits.grant**") == 2 and "amount=1," in second
    assert "Nothing on this page" in await admin(bot_env, admin_user, channel, "audit", page=3)


# -- isolation ---------------------------------------------------------------------------------------------------------------


async def test_two_guilds_are_isolated(bot_env: BotEnv):
    emu = bot_env.emu
    one, two = emu.guild("Test Guild"), emu.guild("Second Guild")
    alice, bob = emu.user("alice"), emu.user("bob")
    here, there = one.channel("general"), two.channel("general")
    start = await bot_env.balance(one, bob)
    await admin(bot_env, alice, there, "credits grant", user=bob, amount=1000)  # alice manages Second Guild only
    await admin(bot_env, alice, there, "ban", user=bob)
    await admin(bot_env, alice, there, "words add", word="cat")
    await admin(bot_env, alice, there, "queue pause")
    with pytest.raises(InvokeError):
        await emu.invoke(alice, here, "admin ban", {"user": bob})
    assert await bot_env.balance(two, bob) == start + 1000
    assert await bot_env.balance(one, bob) == start
    assert "banned" in await refusal(await imagine(bot_env, bob, there))
    await imagine(bot_env, bob, here, prompt="a cat")  # not banned, word allowed, not paused here
    await emu.wait_for_message(here, is_result, timeout=30)
    assert await audit_actions(bot_env, one) == []
    assert len(await audit_actions(bot_env, two)) == 4
