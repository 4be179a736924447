"""Who may do what: derived jobs re-check the modules they reuse, refused reactions are answered in
private, the ✉️ DM tells a member only what they could see, and ids never cross servers."""

from __future__ import annotations

import asyncio

import pytest

from services.jobs import UserError
from storage import WrongGuild, settings
from tests import test_bot_hypernet
from tests.bot_fixtures import BotEnv, bot_config, followup_refusal, is_result, png, running_bot
from tests.test_bot_hypernet import imagine, picture, reply
from tests.test_hypernetwork import a1111_file

env = test_bot_hypernet.env  # a bot with modules and small buckets


async def private_module_result(env: BotEnv, owner, channel):
    emu = env.emu
    data, _ = a1111_file((32, 64))
    upload = emu.upload(data, "style.pt", "application/octet-stream")
    assert "added" in await reply(await emu.invoke(owner, channel, "hypernet upload", {"file": upload}))
    await reply(await emu.invoke(owner, channel, "hypernet use", {"name": "style"}))
    return await imagine(env, owner, channel)


async def test_rerolls_cannot_borrow_a_private_module(env: BotEnv):
    emu = env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    message, job = await private_module_result(env, alice, channel)
    assert job.params["hypernets"][0]["name"] == "style"
    balance = await env.balance(guild, bob)
    for action in ("reroll", "var:0"):
        button = next(b for b in message.buttons if b.custom_id.endswith(f":{action}"))
        assert "module `style`, which you can't use here" in await followup_refusal(await emu.click(bob, message, button.custom_id))
    await emu.add_reaction(bob, message, "🔄")  # refused: answered by DM, never in the channel
    dm = await emu.wait_for_message(emu.dm_channel(bob), timeout=10)
    assert "module `style`, which you can't use here" in dm.content
    await asyncio.sleep(0.3)
    assert [m for m in emu.channel_messages(channel) if "reroll of job" in (m.content or "")] == []
    assert await env.balance(guild, bob) == balance and await env.services.queue.list(user_id=bob.id) == []

    # its owner may
    reroll = next(b for b in message.buttons if b.custom_id.endswith(":reroll"))
    await (await emu.click(alice, message, reroll.custom_id)).wait_acked(3)
    again = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id != message.id, timeout=30)
    assert f"job #{job.id}" not in again.content


async def test_the_dm_shows_only_what_the_member_could_see(env: BotEnv):
    emu = env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    message, job = await private_module_result(env, alice, channel)
    await emu.add_reaction(bob, message, "✉️")
    seen_by_bob = (await emu.wait_for_message(emu.dm_channel(bob), timeout=10)).content
    await emu.add_reaction(alice, message, "✉️")
    seen_by_alice = (await emu.wait_for_message(emu.dm_channel(alice), timeout=10)).content
    assert 'hypernet: "a private module:1"' in seen_by_bob and "style" not in seen_by_bob
    assert 'hypernet: "style:1"' in seen_by_alice
    data_dir = str(env.config.data_dir)
    assert data_dir not in seen_by_bob + seen_by_alice and ".safetensors" not in seen_by_bob + seen_by_alice

    upload = emu.upload(png(picture(64, 64, 1)), "a.png", "image/png")
    it = await emu.invoke(alice, channel, "hypernet train", {"name": "cats", "images": upload, "captions": "red cat|", "steps": 1})
    assert "one caption for all images" in await followup_refusal(it)
    it = await emu.invoke(alice, channel, "hypernet train", {"name": "cats", "images": upload, "captions": "red cat", "steps": 1})
    await it.wait_acked(3)
    sample = await emu.wait_for_message(channel, lambda m: is_result(m) and "hypernetwork cats" in m.content, timeout=60)
    await emu.add_reaction(bob, sample, "✉️")
    dm = await emu.wait_for_message(emu.dm_channel(bob), lambda m: "hypernet_train" in (m.content or ""), timeout=10)
    assert data_dir not in dm.content and "Module path" not in dm.content and "Train images" not in dm.content


async def test_job_ids_and_channels_do_not_cross_servers(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    _, job = await imagine(env, alice, channel)
    assert (await env.services.actions.job(job.id, guild.id)).id == job.id
    with pytest.raises(UserError, match=f"Job #{job.id} no longer exists"):
        await env.services.actions.job(job.id, guild.id + 1)
    assert (await settings.update_channel_settings(env.services.db, guild.id, channel.id, enabled=True, actor_id=1)).enabled
    with pytest.raises(WrongGuild):
        await settings.update_channel_settings(env.services.db, guild.id + 1, channel.id, enabled=False, actor_id=1)
    await env.services.check_access(guild_id=guild.id, user_id=alice.id, channel_id=channel.id)  # still allowed here


async def test_a_job_over_the_gpu_time_cap_is_refused_whatever_the_credits(emulator, tmp_path, tiny_model_dir):
    config = bot_config(emulator, tmp_path / "data", tiny_model_dir, limits={"max_job_gpu_s": 1.0},
                        credits={"start_balance": 10**9})  # fmt: skip
    async with running_bot(emulator, config) as env:
        emu = env.emu
        guild, alice = emu.guild(), emu.user("alice")
        channel = guild.channel("general")
        env.services.worker.stats.seconds_per_cost = 0.5  # as measured on a slow GPU
        before = await env.balance(guild, alice)
        it = await emu.invoke(alice, channel, "imagine", {"prompt": "a cat", "steps": 40, "count": 4})
        assert " s of GPU time; this bot allows 1 s per job" in await followup_refusal(it)
        assert await env.balance(guild, alice) == before
        await (await emu.invoke(alice, channel, "imagine", {"prompt": "a cat", "steps": 1})).wait_acked(3)
        await emu.wait_for_message(channel, is_result, timeout=30)


async def test_variations_of_an_image_no_longer_stored_answer_clearly(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    message, job = await imagine(env, alice, channel)
    await env.services.store.delete(job.result["images"][0]["key"])
    balance = await env.balance(guild, alice)
    for action in ("var:0", "up:0"):
        button = next(b for b in message.buttons if b.custom_id.endswith(f":{action}"))
        assert "no longer stored" in await followup_refusal(await emu.click(alice, message, button.custom_id))
    assert await env.balance(guild, alice) == balance
    reroll = next(b for b in message.buttons if b.custom_id.endswith(":reroll"))
    await (await emu.click(alice, message, reroll.custom_id)).wait_acked(3)
    await emu.wait_for_message(channel, lambda m: is_result(m) and m.id != message.id, timeout=30)
