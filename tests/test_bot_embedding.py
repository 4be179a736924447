"""/embedding end to end: the real bot, the emulator, SQLite and the tiny SD 1.x and SDXL models, with
A1111 embeddings built here (tests.test_embeddings): a prompt or negative that names one changes the
picture while other prompts stay pixel-identical, names that are vocabulary words are refused, token
counts include the vectors, the private rule is the one every module follows, and on SDXL a LoRA and an
embedding work the same way."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch
from safetensors.torch import save

from tests.bot_fixtures import BotEnv, bot_config, followup_refusal, running_bot
from tests.test_bot_hypernet import reply
from tests.test_bot_lora import imagine, lora_file, upload
from tests.test_embeddings import a1111_pt, native, random_vectors
from worker.jobs import EmbeddingUse, params_of


@pytest.fixture
async def env(emulator, tmp_path, tiny_model_dir) -> AsyncIterator[BotEnv]:
    config = bot_config(emulator, tmp_path / "data", tiny_model_dir,
                        generation={"default_aspect": "square", "max_area": 128 * 128, "default_steps": 4})  # fmt: skip
    async with running_bot(emulator, config) as env:
        yield env


@pytest.fixture
async def sdxl_env(emulator, tmp_path, tiny_sdxl_dir) -> AsyncIterator[BotEnv]:
    config = bot_config(emulator, tmp_path / "data", tiny_sdxl_dir, generation={"default_aspect": "square", "max_area": 0, "default_steps": 3})
    async with running_bot(emulator, config) as env:
        yield env


def pt_file(env: BotEnv, n: int = 4, seed: int = 1) -> bytes:
    return a1111_pt(random_vectors(env.services.worker.engine, n, seed)[0])


async def test_naming_an_embedding_changes_the_picture_and_nothing_else(env: BotEnv):
    emu = env.emu
    guild, alice, bob = emu.guild(), emu.user("alice"), emu.user("bob")
    channel = guild.channel("general")
    named_before, _, _, _ = await imagine(env, alice, channel, "a cat, xq-style")
    plain_before, _, _, _ = await imagine(env, alice, channel, "a cat, xq-styles")

    assert "Write `xq-style` in a prompt" in await upload(env, alice, channel, pt_file(env), "xq-style.pt", "embedding upload")
    named, png_params, message, job = await imagine(env, alice, channel, "a cat, xq-style")
    p = params_of(job)
    assert p.embeddings == (EmbeddingUse("xq-style", p.embeddings[0].path, 4),) and png_params["prompt"].endswith("a cat, xq-style")
    assert np.abs(named - named_before).mean() > 1
    # part of a longer word is not the name; other prompts never change
    np.testing.assert_array_equal((await imagine(env, alice, channel, "a cat, xq-styles"))[0], plain_before)
    # bob can't use alice's private embedding: for him the name is plain text
    bobs, _, _, job = await imagine(env, bob, channel, "a cat, xq-style")
    assert params_of(job).embeddings == () and np.array_equal(bobs, named_before)
    reroll = next(b for b in message.buttons if b.custom_id.endswith(":reroll"))  # a derived job re-checks it
    assert "embedding `xq-style`, which you can't use here" in await followup_refusal(await emu.click(bob, message, reroll.custom_id))
    _, _, _, job = await imagine(env, alice, channel, "a dog", negative="xq-style")  # in the negative too
    assert [e.name for e in params_of(job).embeddings] == ["xq-style"]

    assert "Made for a 32-wide model · 4 vectors" in await reply(await emu.invoke(alice, channel, "embedding info", {"name": "xq-style"}))
    assert "`xq-style` — yours" in await reply(await emu.invoke(alice, channel, "embedding list", {}))
    assert "approval" in await reply(await emu.invoke(alice, channel, "embedding share", {"name": "xq-style"}))
    await reply(await emu.invoke(emu.user("mod"), channel, "admin modules approve", {"name": "xq-style"}))
    shared, _, _, job = await imagine(env, bob, channel, "a cat, xq-style")
    assert [e.name for e in params_of(job).embeddings] == ["xq-style"]
    np.testing.assert_array_equal(shared, named)
    assert "deleted" in await reply(await emu.invoke(alice, channel, "embedding delete", {"name": "xq-style"}))
    assert params_of((await imagine(env, bob, channel, "a cat, xq-style"))[3]).embeddings == ()
    # an embedding is used by naming it: no per-member defaults
    assert {o["name"] for o in emu.commands.find("embedding", None)["options"]} == {"list", "info", "upload", "delete", "share"}
    assert emu.failures == []


async def test_refusals_vocabulary_words_and_token_counts(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    balance = await env.balance(guild, alice)
    for data, filename, options, why in [
        (pt_file(env), "red.pt", {}, "`red` is an ordinary word"),
        (pt_file(env), "style.pt", {"name": "Cat"}, "`Cat` is an ordinary word"),
        (native([torch.zeros(2, 64)]), "wide.safetensors", {}, "made for a 64-wide model"),
        (b"PK\x03\x04broken", "broken.pt", {}, "damaged"),
        (save({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}), "lora.safetensors", {}, "not a textual-inversion embedding"),
        (pt_file(env), "style.bin", {}, ".safetensors or an AUTOMATIC1111 .pt"),
    ]:
        it = await emu.invoke(alice, channel, "embedding upload", {"file": emu.upload(data, filename, "application/octet-stream"), **options})
        assert why in await followup_refusal(it), why
    assert await env.services.embeddings.visible(guild.id, alice.id) == []

    assert "added" in await upload(env, alice, channel, pt_file(env, n=75), "xq-long.pt", "embedding upload")
    words = ", ".join(["cat"] * 80)  # 159 tokens: fits alone, not with 75 vectors
    it = await emu.invoke(alice, channel, "imagine", {"prompt": f"{words}, xq-long", "quality": False})
    assert "at least 235 tokens; the limit is 225" in await followup_refusal(it)
    assert await env.balance(guild, alice) == balance
    _, _, _, job = await imagine(env, alice, channel, f"{', '.join(['cat'] * 70)}, xq-long", quality=False)  # 140 + 75 fits
    assert [e.vectors for e in params_of(job).embeddings] == [75]


async def test_lora_and_embedding_on_sdxl(sdxl_env: BotEnv):
    env, emu = sdxl_env, sdxl_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    engine = env.services.worker.engine
    plain, _, _, _ = await imagine(env, alice, channel, "a cat, xq-xl")
    sd1_embedding = native([torch.zeros(2, engine.text_widths[0])])
    it = await emu.invoke(alice, channel, "embedding upload", {"file": emu.upload(sd1_embedding, "sd1.safetensors", "application/octet-stream")})
    assert "is a 32 + 64-wide model" in await followup_refusal(it)

    assert "added" in await upload(env, alice, channel, native(random_vectors(engine, 3, seed=5)), "xq-xl.safetensors", "embedding upload")
    assert "added" in await upload(env, alice, channel, lora_file(env, 6), "xl-style.safetensors")
    named, _, _, _ = await imagine(env, alice, channel, "a cat, xq-xl")
    styled, params, _, _ = await imagine(env, alice, channel, "a cat, xq-xl <lora:xl-style:1>")
    assert params["Lora"] == "xl-style:1"
    assert np.abs(named - plain).mean() > 1 and np.abs(styled - named).mean() > 1
    np.testing.assert_array_equal((await imagine(env, alice, channel, "a cat, xq-xl"))[0], named)
    assert emu.failures == []
