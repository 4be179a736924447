"""img2img end to end: `/imagine image:` with strength and noise, Vary (Subtle/Strong) and the Remix
form, through the real bot, the emulator, SQLite and the tiny model."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch
from PIL import Image

from gen_core.buckets import nearest_bucket
from storage import compute_cost
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
from worker.jobs import params_of


def gradient(width: int, height: int) -> Image.Image:
    """Smooth colours a VAE reproduces well, with a different corner everywhere."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    return Image.fromarray((np.stack([x, y, 1 - x * y], -1) * 255).astype(np.uint8), "RGB")


def mean_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def vae_round_trip(engine, picture: Image.Image) -> Image.Image:
    """decode(encode(picture)) with the engine's VAE: what strength 0 gives back."""
    processor = engine.img2img.image_processor
    with torch.no_grad():
        latents = engine.vae.encode(processor.preprocess(picture)).latent_dist.mode()
        return processor.postprocess(engine.vae.decode(latents).sample, output_type="pil")[0]


async def result_job(env: BotEnv, message):
    return await env.services.queue.get(result_job_id(message))


async def stored_image(env: BotEnv, key: str) -> Image.Image:
    return Image.open(io.BytesIO(await env.services.store.get(key))).convert("RGB")


@pytest.fixture
async def env(emulator, tmp_path, tiny_model_dir) -> AsyncIterator[BotEnv]:
    config = bot_config(emulator, tmp_path / "data", tiny_model_dir, limits={"max_attachment_bytes": 200_000})
    async with running_bot(emulator, config) as running:
        yield running


def calibrated(env: BotEnv):
    """The running bot's engine, its tiny VAE's latents scaled to unit variance as SD's scaling factor
    does for its VAE; else even the lowest noise level would swamp them (see tests/test_engine.py)."""
    engine = env.services.worker.engine
    with torch.no_grad():
        latents = engine.vae.encode(engine.img2img.image_processor.preprocess(gradient(256, 256))).latent_dist.mode()
    engine.vae.register_to_config(scaling_factor=1.0 / float(latents.std()))
    return engine


async def imagine(env: BotEnv, picture: Image.Image | bytes, name: str = "photo.png", **options):
    emu = env.emu
    upload = emu.upload(picture if isinstance(picture, bytes) else png(picture), name, "image/png")
    it = await emu.invoke(emu.user("alice"), emu.guild().channel("general"), "imagine", {"image": upload, **options})
    await it.wait_acked(3.0)
    return it


async def test_upload_is_fitted_to_its_bucket_priced_by_strength_and_shows_strength_and_noise(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    before = await env.balance(guild, alice)
    await imagine(env, gradient(300, 200), prompt="a red circle", strength=0.5, noise=0.25, seed=3, steps=40)
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    bucket = nearest_bucket(300, 200, env.services.jobs.buckets)
    assert bucket == (384, 256)
    assert (result.attachments[0].width, result.attachments[0].height) == bucket
    _, params = await attachment_image(emu, result.attachments[0])
    assert params["denoising_strength"] == 0.5 and params["extra_noise"] == 0.25
    assert params["Mode"] == "img2img" and params["prompt"] == "masterpiece, best quality, a red circle"
    assert "strength 0.5 · noise 0.25 · cropped to its bucket (`fit:pad` keeps all of it)" in result.content

    job = await result_job(env, result)
    assert job.params["init_image"] and job.params["fit"] == "crop"
    policy = await env.services.ledger.policy_for(guild.id)
    assert job.cost == compute_cost("imagine", 384, 256, 20, policy=policy)  # 0.5 × 40 steps denoised
    assert job.cost < compute_cost("imagine", 384, 256, 40, policy=policy)
    assert await env.balance(guild, alice) == before - job.cost

    quote = await emu.invoke(alice, channel, "cost", {"prompt": "a red circle", "aspect": "384x256", "steps": 40, "strength": 0.5})
    text = (await quote.original(5)).content
    assert f"would cost **{job.cost}** credits" in text and "strength 0.5 (20 steps denoised)" in text

    history = await (await emu.invoke(alice, channel, "history")).original(10)
    assert "strength 0.5 · noise 0.25" in history.embeds[0]["title"]
    await emu.add_reaction(alice, result, "✉️")
    dm = await emu.wait_for_message(emu.dm_channel(alice), timeout=10)
    assert "Denoising strength: 0.5" in dm.content and "Extra noise: 0.25" in dm.content
    assert emu.failures == []


async def test_crop_or_pad_into_the_named_bucket(env: BotEnv):
    emu, channel = env.emu, env.emu.guild().channel("general")
    wide = gradient(300, 100)
    fitted = {}
    for fit in ("crop", "pad"):
        await imagine(env, wide, prompt="a wide picture", aspect="square", fit=fit, strength=0.2)
        result = await emu.wait_for_message(channel, is_result, timeout=30)
        assert (result.attachments[0].width, result.attachments[0].height) == (256, 256)
        job = await result_job(env, result)
        fitted[fit] = np.asarray(await stored_image(env, job.params["init_image"]), np.float32)
        assert ("padded to its bucket" in result.content) == (fit == "pad")
    bars = np.concatenate([fitted["pad"][:80], fitted["pad"][-80:]])
    assert bars.std(axis=(0, 1)).max() < 1  # pad: the whole picture (256×85) on bars of one colour
    assert mean_diff(fitted["pad"][90:166], np.asarray(wide.resize((256, 85)), np.float32)[4:80]) < 3
    middle = np.asarray(wide.crop((100, 0, 200, 100)).resize((256, 256)), np.float32)
    assert mean_diff(fitted["crop"], middle) < 3  # crop: the middle third, filling the bucket
    assert emu.failures == []


async def test_strength_zero_returns_the_input_within_the_vae_round_trip(env: BotEnv):
    emu, channel = env.emu, env.emu.guild().channel("general")
    picture = gradient(256, 256)  # already a bucket: fitted unchanged
    roundtrip = vae_round_trip(calibrated(env), picture)
    diffs = {}
    for strength in (0.0, 1.0):
        await imagine(env, picture, prompt="anything", strength=strength, steps=10, seed=1)
        result = await emu.wait_for_message(channel, is_result, timeout=30)
        pixels, params = await attachment_image(emu, result.attachments[0])
        assert params["denoising_strength"] == strength
        diffs[strength] = mean_diff(pixels, roundtrip)
    assert diffs[0.0] < 4 and diffs[1.0] > 4 * diffs[0.0], diffs


async def test_refused_uploads_and_options_cost_nothing(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    before, jobs = await env.balance(guild, alice), await env.services.queue.list(guild_id=guild.id)
    big = (np.random.default_rng(0).random((300, 300, 3)) * 255).astype(np.uint8)  # ~270 kB of noise
    cases = [
        (b"this is a letter, not a picture", {}, "not an image"),
        (png(Image.fromarray(big)), {}, "the limit is"),
    ]
    for data, options, expected in cases:
        it = await imagine(env, data, prompt="a cat", **options)
        assert expected in await followup_refusal(it)
    text_only = await emu.invoke(alice, guild.channel("general"), "imagine", {"prompt": "a cat", "strength": 0.5})
    assert "add one with `image:`" in await followup_refusal(text_only)
    assert await env.balance(guild, alice) == before
    assert await env.services.queue.list(guild_id=guild.id) == jobs
    assert emu.failures == []


async def test_permutations_and_server_rules_apply_to_an_upload(env: BotEnv):
    emu = env.emu
    channel = emu.guild().channel("general")
    it = await imagine(env, gradient(200, 300), prompt="a {red, blue} circle", quality=False)
    first = await emu.wait_for_message(channel, is_result, timeout=30)
    second = await emu.wait_for_message(channel, is_result, timeout=30)
    prompts = {(await result_job(env, m)).params["prompt"] for m in (first, second)}
    assert prompts == {"a red circle", "a blue circle"}
    assert all((m.attachments[0].width, m.attachments[0].height) == (256, 384) for m in (first, second))
    assert it.followups == []
    nsfw = await imagine(env, gradient(64, 64), prompt="a nude statue")
    assert "NSFW" in await followup_refusal(nsfw)
    assert emu.failures == []


async def test_vary_subtle_strong_and_remix_work_after_restarts(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    gen = env.config.generation
    it = await emu.invoke(alice, channel, "imagine", {"prompt": "a cat", "negative": "blurry", "count": 2, "steps": 10})
    await it.wait_acked(3)
    grid = await emu.wait_for_message(channel, is_result, timeout=30)
    source = await result_job(env, grid)
    labels = [[c.get("label") or c["emoji"]["name"] for c in row["components"]] for row in grid.raw_components]
    assert labels == [["🔄", "❌"], ["V1 Subtle", "V1 Strong", "Remix 1", "U1"], ["V2 Subtle", "V2 Strong", "Remix 2", "U2"]]
    await env.restart()
    second = vae_round_trip(calibrated(env), await stored_image(env, source.result["images"][1]["key"]))
    distance = {}
    for label, strength in (("V2 Subtle", gen.vary_subtle_strength), ("V2 Strong", gen.vary_strong_strength)):
        click = await emu.click(alice, grid, next(b.custom_id for b in grid.buttons if b.label == label))
        await click.wait_acked(3)
        varied = await emu.wait_for_message(channel, is_result, timeout=30)
        job = await result_job(env, varied)
        assert (job.params["mode"], job.params["source_index"], job.params["strength"]) == ("variation", 1, strength)
        assert job.params["init_image"] == source.result["images"][1]["key"] and job.params["prompt"] == source.params["prompt"]
        pixels, params = await attachment_image(emu, varied.attachments[0])
        assert params["denoising_strength"] == strength
        assert job.cost == env.services.jobs.cost(params_of(job), await env.services.ledger.policy_for(guild.id))
        distance[label] = mean_diff(pixels, second)  # from the picture as the VAE gives it back
    assert distance["V2 Strong"] > 1.2 * distance["V2 Subtle"], distance  # Strong moves further from the picture

    opened = await emu.click(alice, grid, next(b.custom_id for b in grid.buttons if b.label == "Remix 1"))
    await opened.wait_acked(3)
    assert opened.response_type == 9 and opened.modal["title"] == "Remix"
    defaults = {c["custom_id"]: c.get("value") for c in walk_inputs(opened.modal["components"])}
    assert defaults == {"prompt": "a cat", "negative": source.params["negative"]}
    assert "blurry" in defaults["negative"]
    await env.restart()  # the form outlives the bot that opened it
    submitted = await emu.submit_modal(alice, opened, {"prompt": "a {dog, fox}", "negative": "ugly"})
    await submitted.wait_acked(3)
    remixes = [await emu.wait_for_message(channel, is_result, timeout=30) for _ in range(2)]
    jobs = [await result_job(env, m) for m in remixes]
    assert {j.params["user_prompt"] for j in jobs} == {"a dog", "a fox"}
    for job in jobs:
        assert job.params["prompt"] == f"{gen.quality_tags}, {job.params['user_prompt']}"
        assert job.params["negative"].startswith("ugly, ") and "blurry" not in job.params["negative"]  # + the server's
        assert job.params["strength"] == gen.vary_strong_strength
        assert job.params["init_image"] == source.result["images"][0]["key"] and job.params["source_index"] == 0
    assert emu.failures == []


def walk_inputs(components):
    for c in components:
        if c["type"] == 4:
            yield c
        yield from walk_inputs(c.get("components", []) + ([c["component"]] if "component" in c else []))


async def test_remix_admits_before_its_form_and_again_on_submission(env: BotEnv):
    emu = env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    channel = guild.channel("general")
    await (await emu.invoke(alice, channel, "imagine", {"prompt": "a cat", "steps": 4})).wait_acked(3)
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    source = await result_job(env, result)
    remix = next(b.custom_id for b in result.buttons if b.label == "Remix")
    opened = await emu.click(alice, result, remix)
    assert await opened.wait_acked(3) == 9
    await (await emu.invoke(mod, channel, "admin ban", {"user": alice, "reason": "spam"})).original(10)
    before = await env.balance(guild, alice)

    refused = await emu.click(alice, result, remix)  # no form for a banned member: the refusal is the answer
    assert await refused.wait_acked(3) == 4 and refused.modal is None
    assert "(spam)" in (await refused.original(5)).embeds[0]["description"]
    submitted = await emu.submit_modal(alice, opened, {"prompt": "a dog"})  # a form opened before the ban
    assert "(spam)" in await followup_refusal(submitted)
    assert await env.balance(guild, alice) == before
    assert [j.id for j in await env.services.queue.list(guild_id=guild.id, statuses=None)] == [source.id]
    assert emu.failures == []
