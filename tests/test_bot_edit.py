"""/edit (Imagic) end to end: the real bot, the emulator, SQLite and the tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image

from tests.bot_fixtures import (
    BotEnv,
    attachment_image,
    bot_config,
    followup_refusal,
    is_result,
    png,
    result_job_id,
    running_bot,
)


def picture(width: int = 64, height: int = 64) -> Image.Image:
    return Image.fromarray((np.random.default_rng(1).random((height, width, 3)) * 255).astype(np.uint8))


async def result_job(env: BotEnv, message):
    return await env.services.queue.get(result_job_id(message))


@pytest.fixture
async def edit_env(emulator, tmp_path, tiny_model_dir) -> AsyncIterator[BotEnv]:
    # Few optimisation steps and a small bucket: the flows are real, the model is tiny.
    config = bot_config(
        emulator, tmp_path / "data", tiny_model_dir,
        edit={"fast_embed_steps": 4, "fast_tune_steps": 4},
        generation={"default_aspect": "256x256", "max_area": 128 * 192},
    )  # fmt: skip
    async with running_bot(emulator, config) as env:
        yield env


async def test_edit_then_eta_remix_and_imagine_unaffected(edit_env: BotEnv):
    env, emu = edit_env, edit_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    await (await emu.invoke(alice, channel, "imagine", {"prompt": "a cat", "seed": 5})).wait_acked(3)
    before = await emu.wait_for_message(channel, is_result, timeout=30)

    balance = await env.balance(guild, alice)
    upload = emu.upload(png(picture()), "cake.png", "image/png")
    it = await emu.invoke(alice, channel, "edit", {"image": upload, "prompt": "a pistachio cake", "seed": 9, "eta": 0.6})
    await it.wait_acked(3)
    status = await it.original(5)
    await emu.wait_for_edit(status, lambda m: "embedding" in (m.content or "") or "fine-tune" in (m.content or ""), timeout=30)
    edited = await emu.wait_for_message(channel, is_result, timeout=60)
    job = await result_job(env, edited)
    assert job.kind == "edit" and await env.balance(guild, alice) == balance - job.cost
    assert env.services.edit_cache.path(job.id).is_file()
    pixels, params = await attachment_image(env.emu, edited.attachments[0])
    assert pixels.shape == (128, 128, 3)  # the upload was fitted to this server's square bucket
    assert float(params["Imagic eta"]) == 0.6 and params["seed"] == 9 and "pistachio" in params["prompt"]
    labels = {b.label for b in edited.buttons}
    assert {"η 0.5", "η 0.7", "η 0.9", "η 1.1"} <= labels and "V1" not in labels

    eta_button = next(b for b in edited.buttons if b.label == "η 0.9")
    await (await emu.click(alice, edited, eta_button.custom_id)).wait_acked(3)
    remixed = await emu.wait_for_message(channel, is_result, timeout=30)
    remix = await result_job(env, remixed)
    assert remix.kind == "edit_remix" and remix.params["source_job"] == job.id
    assert remix.cost <= job.cost and "work_steps" not in remix.params  # priced like a txt2img
    _, remix_params = await attachment_image(env.emu, remixed.attachments[0])
    assert float(remix_params["Imagic eta"]) == 0.9 and remix_params["seed"] == 9  # η button keeps the seed

    # A reroll of the re-mix: a new seed, still sampled from the first edit's tuned state.
    reroll = next(b for b in remixed.buttons if b.custom_id.endswith(":reroll"))
    await (await emu.click(alice, remixed, reroll.custom_id)).wait_acked(3)
    rerolled = await result_job(env, await emu.wait_for_message(channel, is_result, timeout=30))
    assert rerolled.kind == "edit_remix" and rerolled.params["source_job"] == job.id
    assert rerolled.params["seed"] != 9 and rerolled.params["eta"] == 0.9

    await (await emu.invoke(alice, channel, "imagine", {"prompt": "a cat", "seed": 5})).wait_acked(3)
    after = await emu.wait_for_message(channel, is_result, timeout=30)
    first, _ = await attachment_image(env.emu, before.attachments[0])
    second, _ = await attachment_image(env.emu, after.attachments[0])
    assert np.array_equal(first, second)  # the adapters left the shared UNet as they found it
    assert emu.failures == []


async def test_edit_refuses_bad_attachments_without_charge(edit_env: BotEnv):
    env, emu = edit_env, edit_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    balance = await env.balance(guild, alice)
    upload = emu.upload(b"this is not a picture", "notes.png", "image/png")
    it = await emu.invoke(alice, channel, "edit", {"image": upload, "prompt": "a cake"})
    assert "not an image" in await followup_refusal(it)
    it = await emu.invoke(alice, channel, "edit", {"image": emu.upload(png(picture()), "a.png", "image/png"), "prompt": "  "})
    assert "prompt is empty" in await followup_refusal(it)
    assert await env.balance(guild, alice) == balance
    assert await env.services.queue.get(1) is None  # no job was created


async def test_cost_shows_edit_price(edit_env: BotEnv):
    emu = edit_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    it = await emu.invoke(alice, channel, "cost", {"prompt": "a cat", "edit": "quality"})
    await it.wait_acked(3)
    text = (await it.original(5)).content
    imagine_cost = int(text.split("**")[1])
    edit_cost = int(text.split("would cost **")[2].split("**")[0])
    assert "quality" in text and edit_cost > 10 * imagine_cost


async def test_remix_of_an_evicted_state_fails_clearly_and_refunds(edit_env: BotEnv):
    env, emu = edit_env, edit_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    upload = emu.upload(png(picture()), "cake.png", "image/png")
    await (await emu.invoke(alice, channel, "edit", {"image": upload, "prompt": "a cake"})).wait_acked(3)
    edited = await emu.wait_for_message(channel, is_result, timeout=60)
    job = await result_job(env, edited)
    env.services.edit_cache.remove(job.id)
    balance = await env.balance(guild, alice)
    await (await emu.click(alice, edited, next(b.custom_id for b in edited.buttons if b.label == "η 0.5"))).wait_acked(3)
    for _ in range(200):
        remix = await env.services.queue.get(job.id + 1)
        if remix is not None and remix.status == "failed":
            break
        await asyncio.sleep(0.05)
    assert remix.status == "failed" and "run /edit again" in remix.error
    assert await env.balance(guild, alice) == balance
