"""The bot on an SDXL checkpoint (the tiny SDXL model) end to end through the emulator: /imagine
with its V/U buttons, /mix, /outpaint and /inpaint, at SDXL's buckets scaled to the model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gen_core.metadata import parse_parameters, read_png_parameters
from tests.bot_fixtures import BotEnv, attachment_pixels, bot_config, is_result, png, running_bot


@pytest.fixture
async def sdxl_env(emulator, tmp_path, tiny_sdxl_dir):
    # The model's own sizes (max_area 0): SDXL's bucket list at the tiny model's 256 px.
    config = bot_config(emulator, tmp_path / "data", tiny_sdxl_dir, generation={"default_aspect": "portrait", "max_area": 0})
    async with running_bot(emulator, config) as env:
        yield env


async def params_of(env: BotEnv, attachment) -> dict:
    return parse_parameters(read_png_parameters(await env.emu.read_attachment(attachment)))


def another(first):
    return lambda m: is_result(m) and m.id != first.id


async def test_imagine_variation_upscale_on_sdxl(sdxl_env: BotEnv):
    emu = sdxl_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    assert sdxl_env.services.geometry.sdxl and sdxl_env.services.worker.engine.is_sdxl
    await (await emu.invoke(alice, channel, "imagine", {"prompt": "a red circle", "seed": 3, "count": 1})).wait_acked(3)
    first = await emu.wait_for_message(channel, is_result, timeout=60)
    # portrait on SDXL: 832x1216 scaled to the 256-px model
    assert (first.attachments[0].width, first.attachments[0].height) == (208, 304)
    params = await params_of(sdxl_env, first.attachments[0])
    assert params["seed"] == 3 and params["model"] == sdxl_env.services.worker.engine.model_name

    await emu.click(alice, first, next(b.custom_id for b in first.buttons if b.label == "Vary (Strong)"))
    variation = await emu.wait_for_message(channel, another(first), timeout=60)
    assert (variation.attachments[0].width, variation.attachments[0].height) == (208, 304)
    await emu.click(alice, first, next(b.custom_id for b in first.buttons if b.label == "Upscale"))
    upscaled = await emu.wait_for_message(channel, lambda m: another(first)(m) and m.id != variation.id, timeout=60)
    assert (upscaled.attachments[0].width, upscaled.attachments[0].height) == (416, 608)
    assert emu.failures == []


async def test_mix_outpaint_and_inpaint_on_sdxl(sdxl_env: BotEnv):
    emu = sdxl_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    it = await emu.invoke(alice, channel, "mix", {"prompts": "a cat:0.7 | a dog:0.3", "mode": "composable", "seed": 1})
    await it.wait_acked(3)
    mixed = await emu.wait_for_message(channel, is_result, timeout=60)
    assert (await params_of(sdxl_env, mixed.attachments[0]))["Mix mode"] == "composable"

    src = Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8))
    upload = emu.upload(png(src), "photo.png", "image/png")
    it = await emu.invoke(alice, channel, "outpaint", {"image": upload, "direction": "right", "prompt": "a beach", "pixels": 64})
    await it.wait_acked(3)
    grown = await emu.wait_for_message(channel, another(mixed), timeout=90)
    assert {(a.width, a.height) for a in grown.attachments} == {(192, 128)}
    out = await attachment_pixels(emu, grown.attachments[0])
    blur = sdxl_env.config.generation.mask_blur
    assert (out[:, : 128 - blur] == np.asarray(src)[:, : 128 - blur]).all()

    mask = Image.new("L", src.size, 0)
    mask.paste(255, (32, 32, 96, 96))
    it = await emu.invoke(alice, channel, "inpaint", {
        "image": emu.upload(png(src), "in.png", "image/png"), "prompt": "a cat",
        "mask": emu.upload(png(mask), "mask.png", "image/png"), "mask_blur": 4, "seed": 2,
    })
    await it.wait_acked(3)
    painted = await emu.wait_for_message(channel, lambda m: another(mixed)(m) and m.id != grown.id, timeout=90)
    out = await attachment_pixels(emu, painted.attachments[0])
    assert (out[:24] == np.asarray(src)[:24]).all()
    assert not (out[40:90, 40:90] == np.asarray(src)[40:90, 40:90]).all()
    assert emu.failures == []
