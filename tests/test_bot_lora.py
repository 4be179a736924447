"""/lora end to end: the real bot, the emulator, SQLite and the tiny SD 1.x model, with LoRA files built
here (tests.test_lora): upload, autocomplete, prompt tags and per-member defaults change the picture, a
plain /imagine afterwards is pixel-identical to before, refusals cost nothing, and private LoRAs follow
the one rule set (owner only until shared and approved; derived jobs re-checked; an admin may keep private
modules to age-restricted channels)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from storage import ModuleKind, modules
from tests.bot_fixtures import (
    BotEnv,
    attachment_image,
    bot_config,
    followup_refusal,
    is_result,
    png,
    running_bot,
)
from tests.test_bot_hypernet import reply, result_job
from tests.test_lora import as_layout, unet_lora
from worker.jobs import LoraUse, params_of


@pytest.fixture
async def env(emulator, tmp_path, tiny_model_dir) -> AsyncIterator[BotEnv]:
    config = bot_config(
        emulator, tmp_path / "data", tiny_model_dir,
        generation={"default_aspect": "square", "max_area": 128 * 128, "default_steps": 4},
        lora={"max_file_mb": 1},
    )  # fmt: skip
    async with running_bot(emulator, config) as env:
        yield env


def lora_file(env: BotEnv, seed: int, layout: str = "kohya") -> bytes:
    return as_layout(unet_lora(env.services.worker.engine.unet, seed=seed), layout)


async def upload(env: BotEnv, user, channel, data: bytes, filename: str, command: str = "lora upload", **options) -> str:
    attachment = env.emu.upload(data, filename, "application/octet-stream")
    return await reply(await env.emu.invoke(user, channel, command, {"file": attachment, **options}))


async def imagine(env: BotEnv, user, channel, prompt: str = "a cat", **options):
    """The pixels, PNG parameters and job of a finished /imagine (seed 5 unless given)."""
    seen = {m.id for m in env.emu.channel_messages(channel)}
    await (await env.emu.invoke(user, channel, "imagine", {"prompt": prompt, "seed": 5, **options})).wait_acked(3)
    message = await env.emu.wait_for_message(channel, lambda m: is_result(m) and m.id not in seen, timeout=30)
    pixels, params = await attachment_image(env.emu, message.attachments[0])
    return pixels.astype(np.int16), params, message, await result_job(env, message)


async def test_tags_and_defaults_change_the_picture_and_the_model_is_as_before(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    plain, _, _, _ = await imagine(env, alice, channel)

    assert "added" in await upload(env, alice, channel, lora_file(env, 1), "style.safetensors")
    assert "added" in await upload(env, alice, channel, lora_file(env, 2, "diffusers"), "detail.safetensors")
    styled, png_params, _, job = await imagine(env, alice, channel, "a cat <lora:style:1>")
    p = params_of(job)
    assert p.loras == (LoraUse("style", p.loras[0].path, 1.0, 1.0),) and "<lora" not in p.prompt + p.user_prompt
    assert png_params["Lora"] == "style:1" and "<lora" not in png_params["prompt"]
    assert np.abs(styled - plain).mean() > 1
    again, _, _, _ = await imagine(env, alice, channel)
    np.testing.assert_array_equal(again, plain)  # nothing of the LoRA stayed in the shared model

    # A1111's split weights, text encoder first: this LoRA has UNet weights only
    np.testing.assert_array_equal((await imagine(env, alice, channel, "a cat <lora:style:1:0>"))[0], plain)
    np.testing.assert_array_equal((await imagine(env, alice, channel, "a cat <lora:style:0:1>"))[0], styled)
    both, _, _, job = await imagine(env, alice, channel, "a cat <lora:style:1> <lora:detail:0.8>")
    assert [(u.name, u.unet_weight) for u in params_of(job).loras] == [("style", 1.0), ("detail", 0.8)]
    assert np.abs(both - styled).mean() > 1

    assert "is on" in await reply(await emu.invoke(alice, channel, "lora use", {"name": "style", "strength": 1}))
    by_default, _, _, job = await imagine(env, alice, channel)
    np.testing.assert_array_equal(by_default, styled)
    _, _, _, job = await imagine(env, alice, channel, "a cat <lora:detail:0.5> <lora:style:0.3>")  # tags add, and set weights
    assert [(u.name, u.unet_weight) for u in params_of(job).loras] == [("style", 0.3), ("detail", 0.5)]
    assert "plain model" in await reply(await emu.invoke(alice, channel, "lora off", {}))
    np.testing.assert_array_equal((await imagine(env, alice, channel))[0], plain)

    listed = await reply(await emu.invoke(alice, channel, "lora list", {}))
    assert "`style` — yours" in listed and "`detail` — yours" in listed
    info = await reply(await emu.invoke(alice, channel, "lora info", {"name": "style"}))
    assert "kohya layout" in info and "rank 4" in info and "UNet only" in info and "<lora:style:0.8>" in info
    assert emu.failures == []


async def test_autocomplete_filters_as_the_member_types(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    for i in range(40):
        await modules.register(env.services.db, ModuleKind.LORA, guild.id, alice.id, f"style-{i:02d}", f"/m/{i}", "0" * 64)
    await modules.register(env.services.db, ModuleKind.LORA, guild.id, alice.id, "zebra-style", "/m/z", "0" * 64)

    async def choices(typed: str) -> list[str]:
        return [c["value"] for c in await emu.autocomplete(alice, channel, "lora use", {"name": typed}, focused="name")]

    assert len(await choices("")) == 25  # Discord's cap
    assert await choices("style-3") == [f"style-3{i}" for i in range(10)]
    assert await choices("39") == ["style-39"]  # beyond the first 25, reachable by typing
    assert (await choices("sty"))[0] == "style-00" and "zebra-style" in await choices("zebra")
    assert await emu.autocomplete(emu.user("bob"), channel, "lora use", {"name": ""}, focused="name") == []  # private


async def test_refusals_are_private_and_cost_nothing(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    balance = await env.balance(guild, alice)
    sdxl_key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    sdxl = save({f"{sdxl_key}.lora_down.weight": torch.zeros(4, 2048), f"{sdxl_key}.lora_up.weight": torch.zeros(640, 4)})
    cases = [
        (sdxl, "xl.safetensors", "made for an SDXL model"),
        (lora_file(env, 1)[:-100], "cut.safetensors", "damaged"),
        (save({"model.weight": torch.zeros(2)}), "model.safetensors", "not a LoRA"),
        (lora_file(env, 1), "style.pt", "as a .safetensors file"),
        (os.urandom(1_100_000), "big.safetensors", "the limit is 1 MB"),
    ]
    for data, filename, why in cases:
        it = await emu.invoke(alice, channel, "lora upload", {"file": emu.upload(data, filename, "application/octet-stream")})
        text = await followup_refusal(it)
        assert why in text, text
    assert await env.services.loras.visible(guild.id, alice.id) == []
    assert [p for p in (env.config.data_dir / "loras").rglob("*") if p.is_file()] == []

    assert "added" in await upload(env, alice, channel, lora_file(env, 1), "style.safetensors")
    assert "already exists" in await followup_refusal(
        await emu.invoke(alice, channel, "lora upload", {"file": emu.upload(lora_file(env, 3), "style.safetensors", "application/octet-stream")})
    )
    for prompt, why in [
        ("a cat <lora:nope:1>", "no LoRA `nope`"),
        ("a cat <lora:style:5>", "Strength must be between"),
        ("a cat <lora:style:1:1:1>", "at most two weights"),
        ("a cat <lora:style:dyn=4>", "`dyn=` is not"),
        ("a cat <lycoris:style:1>", "the tags here are"),
    ]:
        assert why in await followup_refusal(await emu.invoke(alice, channel, "imagine", {"prompt": prompt})), prompt
    picture = emu.upload(png(Image.new("RGB", (64, 64), "red")), "red.png", "image/png")
    it = await emu.invoke(alice, channel, "outpaint", {"image": picture, "direction": "right", "prompt": "a cat <lora:style:1>"})
    assert "module tags work in /imagine prompts only" in await followup_refusal(it)
    assert await env.balance(guild, alice) == balance
    assert await env.services.queue.list(guild_id=guild.id, user_id=alice.id, statuses=None) == []


async def test_private_until_shared_and_approved_and_derived_jobs_recheck(env: BotEnv):
    emu = env.emu
    guild, alice, bob, mod = emu.guild(), emu.user("alice"), emu.user("bob"), emu.user("mod")
    general, nsfw = guild.channel("general"), guild.channel("nsfw")
    assert "added" in await upload(env, alice, general, lora_file(env, 1), "style.safetensors")
    _, _, message, job = await imagine(env, alice, general, "a cat <lora:style:1>")

    balance = await env.balance(guild, bob)
    assert "no LoRA `style`" in await followup_refusal(await emu.invoke(bob, general, "imagine", {"prompt": "a <lora:style>"}))
    reroll = next(b for b in message.buttons if b.custom_id.endswith(":reroll"))
    refused = "LoRA `style`, which you can't use here"
    assert refused in await followup_refusal(await emu.click(bob, message, reroll.custom_id))
    await emu.add_reaction(bob, message, "🔄")  # refused by DM
    assert refused in (await emu.wait_for_message(emu.dm_channel(bob), timeout=10)).content
    await emu.add_reaction(bob, message, "✉️")  # the DM does not name it
    seen = (await emu.wait_for_message(emu.dm_channel(bob), lambda m: "Job #" in (m.content or ""), timeout=10)).content
    assert "a private module" in seen and "style" not in seen
    assert await env.balance(guild, bob) == balance

    assert "approval" in await reply(await emu.invoke(alice, general, "lora share", {"name": "style"}))
    assert refused in await followup_refusal(await emu.click(bob, message, reroll.custom_id))  # pending: not yet
    assert "now usable" in await reply(await emu.invoke(mod, general, "admin modules approve", {"name": "style"}))
    await (await emu.click(bob, message, reroll.custom_id)).wait_acked(3)
    rerolled = await emu.wait_for_message(general, lambda m: is_result(m) and f"<@{bob.id}>" in m.content, timeout=30)
    assert [u.name for u in params_of(await result_job(env, rerolled)).loras] == ["style"]

    # an admin keeps private modules to age-restricted channels; approved ones work everywhere
    assert "added" in await upload(env, alice, general, lora_file(env, 2), "mine.safetensors")
    await reply(await emu.invoke(mod, general, "admin modules private", {"where": "age-restricted"}))
    it = await emu.invoke(alice, general, "imagine", {"prompt": "a cat <lora:mine:1>"})
    assert "work only in age-restricted channels" in await followup_refusal(it)
    _, _, _, job = await imagine(env, alice, nsfw, "a cat <lora:mine:1>")
    assert [u.name for u in params_of(job).loras] == ["mine"]
    _, _, _, job = await imagine(env, bob, general, "a cat <lora:style:0.5>")
    assert [u.name for u in params_of(job).loras] == ["style"]
    assert "only its owner" in await reply(await emu.invoke(bob, general, "lora delete", {"name": "style"}))
    assert "deleted" in await reply(await emu.invoke(alice, general, "lora delete", {"name": "style"}))
    assert emu.failures == []
