"""/outpaint and /inpaint end to end: the real bot against the emulator, the tiny model, SQLite."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gen_core.outpaint import inpaint_pipeline
from gen_core.tiny import ensure_tiny_model
from tests.bot_fixtures import (
    BotEnv,
    attachment_pixels,
    bot_config,
    followup_refusal,
    is_result,
    png,
    result_job_id,
    running_bot,
)


def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    arr = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def is_pick(message) -> bool:
    return not message.ephemeral and bool(message.attachments) and message.attachments[0].filename.startswith("pick")


async def test_outpaint_pick_and_directional_chaining(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    src = picture(128, 128)
    before = await bot_env.balance(guild, alice)
    upload = emu.upload(png(src), "photo.png", "image/png")
    it = await emu.invoke(alice, channel, "outpaint", {"image": upload, "direction": "right", "prompt": "a beach", "pixels": 64})
    await it.wait_acked(3.0)
    result = await emu.wait_for_message(channel, is_result, timeout=60)
    assert len(result.attachments) == 4
    assert {(a.width, a.height) for a in result.attachments} == {(192, 128)}
    out = await attachment_pixels(emu, result.attachments[0])
    blur = bot_env.config.generation.mask_blur
    assert (out[:, : 128 - blur] == np.asarray(src)[:, : 128 - blur]).all()
    job = await bot_env.services.queue.get(result_job_id(result))
    assert job.kind == "outpaint" and await bot_env.balance(guild, alice) == before - job.cost

    labels = {b.label for b in result.buttons}
    assert {"P1", "P2", "P3", "P4"} <= labels
    p2 = next(b for b in result.buttons if b.label == "P2")
    await emu.click(alice, result, p2.custom_id)
    picked = await emu.wait_for_message(channel, is_pick, timeout=10)
    assert (picked.attachments[0].width, picked.attachments[0].height) == (192, 128)
    assert len(picked.buttons) == 5

    reroll = next(b for b in result.buttons if b.custom_id.endswith(":reroll"))
    await emu.click(alice, result, reroll.custom_id)
    rerolled = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id != result.id, timeout=60)
    assert len(rerolled.attachments) == 4 and "P1" in {b.label for b in rerolled.buttons}
    again = await attachment_pixels(emu, rerolled.attachments[0])
    assert (again[:, : 128 - blur] == np.asarray(src)[:, : 128 - blur]).all()
    assert not (again[:, 140:] == out[:, 140:]).all()  # a new seed

    await bot_env.restart()  # the buttons are parsed from their custom_id: they survive a restart
    down = next(b for b in picked.buttons if b.custom_id.endswith(":down:1"))
    await emu.click(alice, picked, down.custom_id)
    chained = await emu.wait_for_message(channel, is_result, timeout=60)
    assert (chained.attachments[0].width, chained.attachments[0].height) == (192, 192)
    second = await attachment_pixels(emu, chained.attachments[0])
    picked_pixels = await attachment_pixels(emu, picked.attachments[0])
    assert (second[: 128 - blur] == picked_pixels[: 128 - blur]).all()
    assert emu.failures == []


async def test_outpaint_refuses_non_images_without_charge(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    before = await bot_env.balance(guild, alice)
    upload = emu.upload(b"not a picture at all", "notes.png", "image/png")
    it = await emu.invoke(alice, guild.channel("general"), "outpaint", {"image": upload, "direction": "zoom2", "prompt": "x"})
    assert "not an image" in await followup_refusal(it)
    assert await bot_env.balance(guild, alice) == before


async def test_inpaint_with_mask_and_from_alpha(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    src = picture(120, 100)
    mask = Image.new("L", src.size, 0)
    mask.paste(255, (30, 30, 80, 70))
    it = await emu.invoke(alice, channel, "inpaint", {
        "image": emu.upload(png(src), "in.png", "image/png"), "prompt": "a cat",
        "mask": emu.upload(png(mask), "mask.png", "image/png"), "fill": "noise", "seed": 5, "mask_blur": 4,
    })
    await it.wait_acked(3.0)
    result = await emu.wait_for_message(channel, is_result, timeout=60)
    out = await attachment_pixels(emu, result.attachments[0])
    assert out.shape == (100, 120, 3)
    blur = 4
    keep = np.ones((100, 120), bool)
    keep[30 - blur : 70 + blur, 30 - blur : 80 + blur] = False
    assert (out[keep] == np.asarray(src)[keep]).all()
    assert not (out[40:60, 40:70] == np.asarray(src)[40:60, 40:70]).all()
    assert {"Vary (Subtle)", "Vary (Strong)"} <= {b.label for b in result.buttons}

    rgba = src.convert("RGBA")
    alpha = Image.new("L", src.size, 255)
    alpha.paste(0, (0, 0, 40, 40))
    rgba.putalpha(alpha)
    it = await emu.invoke(alice, channel, "inpaint", {"image": emu.upload(png(rgba), "cut.png", "image/png"), "prompt": "sky"})
    await it.wait_acked(3.0)
    from_alpha = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id != result.id, timeout=60)
    out = await attachment_pixels(emu, from_alpha.attachments[0])
    assert (out[60:, 60:] == np.asarray(src)[60:, 60:]).all()
    assert emu.failures == []


async def test_inpaint_refusals_cost_nothing(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    before = await bot_env.balance(guild, alice)
    image = emu.upload(png(picture(64, 64)), "in.png", "image/png")
    cases = [
        ({"mask": emu.upload(png(Image.new("L", (32, 32), 255)), "m.png", "image/png")}, "same size"),
        ({"mask": emu.upload(png(Image.new("L", (64, 64), 0)), "m.png", "image/png")}, "empty"),
        ({}, "transparent"),
    ]
    for extra, text in cases:
        it = await emu.invoke(alice, channel, "inpaint", {"image": image, "prompt": "a cat", **extra})
        assert text in await followup_refusal(it)
    assert await bot_env.balance(guild, alice) == before
    assert await bot_env.services.queue.get(1) is None


async def test_outpaint_zoom_of_a_large_image_is_scaled_down_and_says_so(bot_env: BotEnv):
    emu = bot_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    upload = emu.upload(png(picture(256, 384)), "big.png", "image/png")
    it = await emu.invoke(alice, channel, "outpaint", {"image": upload, "direction": "zoom1.5", "prompt": "a hall"})
    await it.wait_acked(3.0)
    result = await emu.wait_for_message(channel, is_result, timeout=60)
    width, height = result.attachments[0].width, result.attachments[0].height
    assert width % 64 == 0 and height % 64 == 0
    assert width * height <= bot_env.config.generation.max_area and height > width
    assert any("scaled down" in (f.content or "") for f in it.followups)
    assert emu.failures == []


async def test_inpaint_uses_the_configured_inpainting_checkpoint(emulator, tmp_path, tiny_model_dir):
    inpaint_dir = ensure_tiny_model(tmp_path / "tiny-inpaint", inpainting=True)
    config = bot_config(emulator, tmp_path / "data", tiny_model_dir, model={"inpaint_path": str(inpaint_dir)})
    async with running_bot(emulator, config) as env:
        alice, channel = emulator.user("alice"), emulator.guild().channel("general")
        src = picture(64, 64)
        mask = Image.new("L", src.size, 0)
        mask.paste(255, (0, 0, 32, 64))
        it = await emulator.invoke(alice, channel, "inpaint", {
            "image": emulator.upload(png(src), "in.png", "image/png"), "prompt": "a cat",
            "mask": emulator.upload(png(mask), "mask.png", "image/png"), "mask_blur": 0,
        })
        await it.wait_acked(3.0)
        result = await emulator.wait_for_message(channel, is_result, timeout=60)
        out = await attachment_pixels(emulator, result.attachments[0])
        assert (out[:, 32:] == np.asarray(src)[:, 32:]).all()
        assert inpaint_pipeline(env.services.worker.engine).unet.config.in_channels == 9
        assert emulator.failures == []
