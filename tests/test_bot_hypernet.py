"""/hypernet end to end: the real bot, the emulator, SQLite and the tiny model."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image

from storage import JobKind
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
from tests.test_hypernetwork import a1111_file, evil_pt
from worker.jobs import HypernetUse, params_of


def picture(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


async def reply(it) -> str:
    """An ephemeral answer's text, or its refusal embed's description."""
    message = await it.original(10)
    return message.content or " ".join(e.get("description", "") for e in (message.embeds or []))


async def result_job(env: BotEnv, message):
    return await env.services.queue.get(result_job_id(message))


@pytest.fixture
async def env(emulator, tmp_path, tiny_model_dir) -> AsyncIterator[BotEnv]:
    config = bot_config(
        emulator, tmp_path / "data", tiny_model_dir,
        generation={"default_aspect": "square", "max_area": 128 * 128, "default_steps": 4},
        hypernet={"train_steps": 8, "lr": 0.01},
    )  # fmt: skip
    async with running_bot(emulator, config) as env:
        yield env


async def imagine(env: BotEnv, user, channel, prompt: str = "a cat"):
    await (await env.emu.invoke(user, channel, "imagine", {"prompt": prompt, "seed": 5})).wait_acked(3)
    message = await env.emu.wait_for_message(channel, is_result, timeout=30)
    return message, await result_job(env, message)


async def test_upload_use_imagine_off_and_tags(env: BotEnv):
    emu = env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    plain_msg, _ = await imagine(env, alice, channel)
    plain, _ = await attachment_image(env.emu, plain_msg.attachments[0])

    data, _ = a1111_file((32, 64), activation="relu", layer_norm=True)
    it = await emu.invoke(alice, channel, "hypernet upload", {"file": emu.upload(data, "style.pt", "application/octet-stream")})
    assert "added" in await reply(it)
    assert [c["value"] for c in await emu.autocomplete(alice, channel, "hypernet use", {"name": "st"}, focused="name")] == ["style"]
    assert await emu.autocomplete(bob, channel, "hypernet use", {"name": ""}, focused="name") == []  # private

    assert "is on" in await reply(await emu.invoke(alice, channel, "hypernet use", {"name": "style", "strength": 0.8}))
    styled_msg, job = await imagine(env, alice, channel)
    styled, params = await attachment_image(env.emu, styled_msg.attachments[0])
    assert params_of(job).hypernets[0].name == "style" and params["Hypernet"] == "style:0.8"
    assert np.abs(styled.astype(int) - plain).mean() > 0.5

    assert "plain model" in await reply(await emu.invoke(alice, channel, "hypernet off", {}))
    again, _ = await attachment_image(env.emu, (await imagine(env, alice, channel))[0].attachments[0])
    assert np.array_equal(again, plain)  # nothing of the module stayed on the shared UNet

    tagged_msg, tagged_job = await imagine(env, alice, channel, "a cat <hypernet:style:0>")
    tagged, _ = await attachment_image(env.emu, tagged_msg.attachments[0])
    assert np.array_equal(tagged, plain) and params_of(tagged_job).hypernets[0].strength == 0.0
    assert "<hypernet" not in params_of(tagged_job).prompt

    balance = await env.balance(guild, bob)
    it = await emu.invoke(bob, channel, "imagine", {"prompt": "a dog <hypernet:style:1>"})
    assert "no module `style`" in await followup_refusal(it)
    assert await env.balance(guild, bob) == balance
    info = await reply(await emu.invoke(alice, channel, "hypernet info", {"name": "style"}))
    assert "activation relu" in info and "layer norm on" in info and "sd15" in info
    assert emu.failures == []


async def test_bad_files_are_refused(env: BotEnv, tmp_path):
    emu = env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    marker = tmp_path / "pwned"
    it = await emu.invoke(alice, channel, "hypernet upload", {"file": emu.upload(evil_pt(marker), "evil.pt", "application/octet-stream")})
    assert "pickled code" in await followup_refusal(it) and not marker.exists()
    wrong, _ = a1111_file((768,))
    it = await emu.invoke(alice, channel, "hypernet upload", {"file": emu.upload(wrong, "sd15.pt", "application/octet-stream")})
    assert "another base model" in await followup_refusal(it)
    assert await env.services.hypernets.visible(emu.guild().id, alice.id) == []


async def test_train_progress_list_use_share(env: BotEnv):
    emu = env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for i, (w, h) in enumerate([(64, 64), (128, 64), (64, 128)]):
            z.writestr(f"img{i}.png", png(picture(w, h, i)))
            z.writestr(f"img{i}.txt", f"red cat, sample {i}")
    balance = await env.balance(guild, alice)
    it = await emu.invoke(alice, channel, "hypernet train", {"name": "cats", "images": emu.upload(archive.getvalue(), "set.zip", "application/zip")})
    await it.wait_acked(3)
    status = await it.original(5)
    await emu.wait_for_edit(status, lambda m: "training" in (m.content or ""), timeout=30)
    listed = await reply(await emu.invoke(alice, channel, "hypernet list", {}))
    assert "`cats`" in listed
    sample = await emu.wait_for_message(channel, is_result, timeout=60)
    job = await result_job(env, sample)
    assert job.kind == JobKind.HYPERNET_TRAIN and await env.balance(guild, alice) == balance - job.cost
    price, trained = env.services.jobs.cost, params_of(job)
    assert job.cost == price(trained) and trained.work_steps == 8 * 3 // 2
    assert price(dataclasses.replace(trained, work_steps=3000)) > price(dataclasses.replace(trained, work_steps=0))
    _, params = await attachment_image(env.emu, sample.attachments[0])
    assert params["Hypernet"] == "cats:1"
    labels = {b.custom_id.split(":")[2] for b in sample.buttons}
    assert labels == {"reroll", "delete"}

    listed = await reply(await emu.invoke(alice, channel, "hypernet list", {}))
    assert "`cats`" in listed and "training" not in listed
    info = await reply(await emu.invoke(alice, channel, "hypernet info", {"name": "cats"}))
    assert "Trained on 3 images for 8 steps" in info
    await reply(await emu.invoke(alice, channel, "hypernet use", {"name": "cats"}))
    _, used = await imagine(env, alice, channel)
    assert params_of(used).hypernets == (HypernetUse(name="cats", path=trained.module_path, strength=1.0),)

    # 🔄 on the training result samples again with the module, without training again.
    reroll = next(b for b in sample.buttons if b.custom_id.endswith(":reroll"))
    await (await emu.click(alice, sample, reroll.custom_id)).wait_acked(3)
    again = await result_job(env, await emu.wait_for_message(channel, is_result, timeout=30))
    assert again.kind == JobKind.IMAGINE and params_of(again).hypernets[0].name == "cats"

    assert "approval" in await reply(await emu.invoke(alice, channel, "hypernet share", {"name": "cats"}))
    assert "cats" not in await reply(await emu.invoke(bob, channel, "hypernet list", {}))  # pending: not yet
    await reply(await emu.invoke(emu.user("admin"), channel, "admin modules approve", {"name": "cats"}))
    assert "`cats` — by <@" in await reply(await emu.invoke(bob, channel, "hypernet list", {}))
    assert "only its owner" in await reply(await emu.invoke(bob, channel, "hypernet delete", {"name": "cats"}))
    assert "deleted" in await reply(await emu.invoke(alice, channel, "hypernet delete", {"name": "cats"}))
    assert emu.failures == []


async def test_training_limits_and_bad_input_cost_nothing(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    balance = await env.balance(guild, alice)
    image = emu.upload(png(picture(64, 64, 1)), "a.png", "image/png")
    it = await emu.invoke(alice, channel, "hypernet train", {"name": "x", "images": image, "captions": "cat", "steps": 5000})
    assert "at most 2000 training steps" in await followup_refusal(it)
    it = await emu.invoke(alice, channel, "hypernet train", {"name": "x", "images": image})
    assert "needs a caption" in await followup_refusal(it)
    it = await emu.invoke(alice, channel, "hypernet train", {"name": "bad name", "images": image, "captions": "cat"})
    assert "Module names" in await followup_refusal(it)
    assert await env.balance(guild, alice) == balance
    assert await env.services.hypernets.visible(guild.id, alice.id) == []  # no reserved name left behind


async def test_cancelled_training_refunds_and_frees_the_name(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    balance = await env.balance(guild, alice)
    image = emu.upload(png(picture(64, 64, 1)), "a.png", "image/png")
    it = await emu.invoke(alice, channel, "hypernet train", {"name": "slow", "images": image, "captions": "cat", "steps": 2000})
    await it.wait_acked(3)
    status = await emu.wait_for_edit(await it.original(5), lambda m: "training" in (m.content or ""), timeout=30)
    assert "⏳ training" in await reply(await emu.invoke(alice, channel, "hypernet list", {}))
    cancel = next(b for b in status.buttons if b.custom_id.endswith(":cancel"))
    await (await emu.click(alice, status, cancel.custom_id)).wait_acked(3)
    await emu.wait_for_edit(status, lambda m: "cancelled" in (m.content or ""), timeout=30)
    assert await env.balance(guild, alice) == balance
    assert "slow" not in await reply(await emu.invoke(alice, channel, "hypernet list", {}))
    assert await env.services.hypernets.visible(guild.id, alice.id) == []
    assert [p for p in (env.config.data_dir / "hypernets").rglob("*") if p.is_file()] == []  # no module, no checkpoint
