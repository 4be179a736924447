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

from storage.models import Image as ImageRow
from storage.models import Job
from tests.bot_fixtures import BotEnv, answer, bot_config, is_result, png, running_bot
from tests.test_bot_admin import admin, refusal
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
    assert len(stored(env)) == 3  # two results and the upload
    shown = await admin(env, mod, channel, "storage")
    assert "This server's pictures:** 2 files" in shown and "**The whole image store**" in shown and "3 files" in shown
    assert "older than **30 days** are removed" in shown

    await make_old(env, 31)
    await wait_until(lambda: asyncio.sleep(0, stored(env) == []))  # the periodic sweep, off the event loop
    assert "This server's pictures:** 0 files, 0.0 MB" in await admin(env, mod, channel, "storage")

    balance = await env.balance(guild, alice)
    for message, label in ((text, "Vary (Subtle)"), (text, "Upscale"), (picture, "Vary (Strong)")):
        refused = await refusal(await click(env, alice, message, label))
        assert "no longer stored on this server" in refused and "🔄 still makes the job again" in refused
    refused = await refusal(await click(env, alice, picture, "🔄"))
    assert "The picture this job started from is no longer stored" in refused
    assert await env.balance(guild, alice) == balance
    await (await click(env, alice, text, "🔄")).wait_acked(3)  # a txt2img result is made again from its parameters
    again = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id not in (text.id, picture.id), timeout=30)
    assert (await result_job(env, again)).params["prompt"] == (await result_job(env, text)).params["prompt"]

    history = await answer(await emu.invoke(alice, channel, "history", {}))
    footers = [e.get("footer", {}).get("text", "") for e in history.embeds]
    assert sum("removed after this server's retention period" in f for f in footers) == 2
    assert len(history.attachments) == 1  # the thumbnail of the new result only
