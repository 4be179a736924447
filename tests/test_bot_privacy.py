"""What the bot keeps and forgets, end to end: the image store's retention policy and its disk use in
/admin, and a member's request to be forgotten (their own command and the admin's)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import update

from storage import hypernetworks, moderation
from storage.models import Image as ImageRow
from storage.models import Job
from tests.bot_fixtures import BotEnv, answer, bot_config, is_result, png, running_bot
from tests.test_bot_admin import admin, audit_actions, refusal
from tests.test_bot_imagine import gated
from tests.test_bot_img2img import result_job

SWEEP_S = 0.5


@pytest.fixture
async def env(emulator, tmp_path, tiny_model_dir) -> AsyncIterator[BotEnv]:
    config = bot_config(
        emulator, tmp_path / "data", tiny_model_dir, storage={"keep_images_days": 30, "sweep_interval_h": SWEEP_S / 3600}
    )
    async with running_bot(emulator, config) as env:
        yield env


def stored(env: BotEnv) -> list[str]:
    root = env.services.store.root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def make_old(env: BotEnv, days: float) -> None:
    """Every job and picture so far was made ``days`` ago (rows and files)."""
    past = env.services.db.now() - timedelta(days=days)

    def unit(s) -> None:
        s.execute(update(Job).values(created_at=past))
        s.execute(update(ImageRow).values(created_at=past))

    await env.services.db.run_write(unit)
    old = past.timestamp()
    for key in stored(env):
        os.utime(env.services.store.root / key, (old, old))


async def wait_until(condition, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def result(env: BotEnv, user, channel, **options):
    it = await env.emu.invoke(user, channel, "imagine", {"prompt": "a cat", **options})
    await it.wait_acked(3)
    message = await env.emu.wait_for_message(channel, is_result, timeout=30)
    return message, await result_job(env, message)


async def click(env: BotEnv, user, message, label: str):
    button = next(b for b in message.buttons if label in (b.label, b.emoji))
    return await env.emu.click(user, message, button.custom_id)


async def test_retention_removes_old_pictures_buttons_say_so_and_reroll_still_works(env: BotEnv):
    emu = env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    channel = guild.channel("general")
    text, _ = await result(env, alice, channel)
    picture, _ = await result(env, alice, channel, image=emu.upload(png(Image.new("RGB", (64, 64), "red")), "a.png", "image/png"))
    it = await emu.invoke(alice, channel, "outpaint", {"prompt": "a cat", "direction": "right",
                                                      "image": emu.upload(png(Image.new("RGB", (64, 64), "blue")), "b.png", "image/png")})  # fmt: skip
    await it.wait_acked(3)
    extended = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id not in (text.id, picture.id), timeout=30)
    assert len(stored(env)) == 8  # three results (four candidates for the outpaint) and two uploads
    shown = await admin(env, mod, channel, "storage")
    assert "This server's pictures:** 6 files" in shown and "**The whole image store**" in shown and "8 files" in shown
    assert "older than **30 days** are removed" in shown

    await make_old(env, 31)
    await wait_until(lambda: asyncio.sleep(0, stored(env) == []))  # the periodic sweep, off the event loop
    assert "This server's pictures:** 0 files, 0.0 MB" in await admin(env, mod, channel, "storage")

    balance = await env.balance(guild, alice)
    for message, label in ((text, "Vary (Subtle)"), (text, "Upscale"), (picture, "Vary (Strong)")):
        refused = await refusal(await click(env, alice, message, label))
        assert "no longer stored on this server" in refused and "🔄 still makes the job again" in refused
    refused = await refusal(await click(env, alice, extended, "P1"))
    assert "no longer stored on this server" in refused
    refused = await refusal(await click(env, alice, picture, "🔄"))
    assert "The picture this job started from is no longer stored" in refused
    assert await env.balance(guild, alice) == balance
    await (await click(env, alice, text, "🔄")).wait_acked(3)  # a txt2img result is made again from its parameters
    again = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id not in (text.id, picture.id, extended.id), timeout=30)
    assert (await result_job(env, again)).params["prompt"] == (await result_job(env, text)).params["prompt"]

    history = await answer(await emu.invoke(alice, channel, "history", {}))
    footers = [e.get("footer", {}).get("text", "") for e in history.embeds]
    assert sum("removed after this server's retention period" in f for f in footers) == 4  # the outpaint's, on page 1
    assert len(history.attachments) == 1  # the thumbnail of the new result only


async def forget_prompt(env: BotEnv, user, channel, command: str, **options):
    """`user` runs ``command``; its ephemeral confirmation message with the Forget button."""
    prompt = await (await env.emu.invoke(user, channel, command, options)).original(10)
    assert prompt.ephemeral and "cannot be undone" in prompt.content
    return prompt


async def test_forget_me_cancels_refunds_and_erases_what_only_the_member_had(env: BotEnv):
    emu, services = env.emu, env.services
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    text, text_job = await result(env, alice, channel)
    picture, picture_job = await result(env, alice, channel, image=emu.upload(png(Image.new("RGB", (64, 64), "red")), "a.png", "image/png"))
    await (await click(env, bob, text, "Vary (Subtle)")).wait_acked(3)  # bob's job starts from alice's picture
    bobs = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id not in (text.id, picture.id), timeout=30)
    await emu.add_reaction(alice, text, "⭐")
    await emu.add_reaction(bob, picture, "⭐")
    await wait_until(lambda: services.images.favourites(bob.id, guild.id))
    folder = services.config.data_dir / "hypernets" / str(guild.id)
    folder.mkdir(parents=True)
    modules = {}
    for name, shared, status in (("mine", False, "private"), ("waiting", True, "pending"), ("public", True, "approved")):
        (folder / f"{name}.safetensors").write_bytes(b"module")
        modules[name] = await hypernetworks.register(services.db, guild.id, alice.id, name, str(folder / f"{name}.safetensors"),
                                                     name * 8, shared=shared, status=status)  # fmt: skip

    gate = gated(env)
    balance = await env.balance(guild, alice)
    for _ in range(2):  # one running, one waiting
        await (await emu.invoke(alice, channel, "imagine", {"prompt": "a dog"})).wait_acked(3)
    await asyncio.to_thread(gate.entered.wait, 10)
    assert await env.balance(guild, alice) < balance
    await (await emu.invoke(alice, channel, "hypernet use", {"name": "public"})).original(10)
    kept = {k["key"] for k in text_job.result["images"]}
    gone = {picture_job.params["init_image"], *(k["key"] for k in picture_job.result["images"])}

    prompt = await forget_prompt(env, alice, channel, "forget-me")
    confirm = await emu.click(alice, prompt, prompt.buttons[0].custom_id)
    done = await emu.wait_for_edit(prompt, lambda m: "forgotten" in (m.content or ""), timeout=10)
    gate.gate.set()
    assert await confirm.wait_acked(3) and done.buttons == []
    assert "2 pictures and the prompts of 4 jobs deleted" in done.content and "1 favourite(s)" in done.content
    assert "2 waiting job(s) cancelled" in done.content and "`mine`, `waiting`" in done.content
    assert "credited to a former member: `public`" in done.content

    assert await env.balance(guild, alice) == balance  # refunded
    assert await services.images.history(guild.id, alice.id) == []
    assert await services.images.favourites(alice.id) == [] and await services.images.favourites(bob.id) == []
    for job in (text_job, picture_job):
        erased = await services.queue.get(job.id)
        assert erased.params == {} and erased.result is None and erased.cost == job.cost  # the books keep the job
    assert [await services.store.exists(k) for k in sorted(kept)] == [True] * len(kept)  # bob's variation uses it
    assert [await services.store.exists(k) for k in sorted(gone)] == [False] * len(gone)
    assert sorted(p.name for p in folder.iterdir()) == ["public.safetensors"]
    public = await hypernetworks.get(services.db, guild.id, "public")
    assert public.owner_id == 0 and await hypernetworks.get(services.db, guild.id, "mine") is None
    assert (await services.settings.guild(guild.id)).hypernets.get(alice.id) is None
    listing = await (await emu.invoke(bob, channel, "hypernet list", {})).original(10)
    assert "by a former member" in str(listing.embeds or listing.content)
    assert "forget" in await audit_actions(env, guild)

    assert {text.id, picture.id, bobs.id} <= {m.id for m in emu.channel_messages(channel)}  # what was posted stays
    refused = await refusal(await click(env, bob, text, "🔄"))
    assert "asked the bot to forget them" in refused
    assert emu.failures == []


async def test_a_banned_member_can_ask_and_an_admin_can_forget_a_member(env: BotEnv):
    emu, services = env.emu, env.services
    guild, bob, mod = emu.guild(), emu.user("bob"), emu.user("mod")
    channel = guild.channel("general")
    _, job = await result(env, bob, channel)
    await admin(env, mod, channel, "ban", user=bob)
    await forget_prompt(env, bob, channel, "forget-me")  # a ban does not stop it: it only removes their own data
    prompt = await forget_prompt(env, mod, channel, "admin forget", member=bob)
    assert "<@" in prompt.content and "your" not in prompt.content
    await emu.click(mod, prompt, prompt.buttons[0].custom_id)
    done = await emu.wait_for_edit(prompt, lambda m: "forgotten" in (m.content or ""), timeout=10)
    assert f"<@{bob.id}> is forgotten" in done.content
    assert await services.images.history(guild.id, bob.id) == []
    assert not await services.store.exists(job.result["images"][0]["key"])
    entry = (await moderation.audit_entries(services.db, guild.id, limit=1))[0]
    assert (entry.action, entry.actor_id, entry.target_user_id) == ("forget", mod.id, bob.id)
