"""What the pictures show: every command on the shipped toy-world model, judged in code.

Engine-level figures (prompt following, negative prompts, emphasis, CFG, clip skip, long prompts,
mixing) use the same functions as ``python -m bench.semantics`` with fewer prompts and a safe bound;
the commands run end to end through the emulator with the real bot.  Seeds are fixed throughout.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image

from gen_core.engine import Engine
from gen_core.types import EngineConfig
from services.config import GenerationConfig
from tests.bot_fixtures import (
    BotEnv,
    attachment_image,
    attachment_pixels,
    bot_config,
    is_result,
    png,
    running_bot,
)
from toyworld import MODEL_DIR
from toyworld import semantics as sem
from toyworld.judge import colour_share, judge
from toyworld.world import Scene, draw

SEEDS = (11, 12)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(EngineConfig(model_path=str(MODEL_DIR), device="cpu", dtype="fp32"))


# -- the model, through the engine ------------------------------------------------------------------


def test_follows_prompts_it_never_saw(engine):
    scores = sem.prompt_accuracy(engine, 12, SEEDS)
    assert scores["colour"] >= 0.6 and scores["background"] >= 0.6 and scores["shape"] >= 0.45, scores


def test_guidance_and_clip_skip(engine):
    weak = sem.prompt_accuracy(engine, 8, SEEDS, cfg=1.0)
    strong = sem.prompt_accuracy(engine, 8, SEEDS, cfg=7.0)
    # guidance is what makes the shape right; colour and background are already followed at CFG 1
    assert strong["shape"] > weak["shape"], (weak, strong)
    last = sem.prompt_accuracy(engine, 8, SEEDS, clip_skip=1)
    assert last["colour"] >= 0.6 and last["background"] >= 0.6, last


def test_negative_prompt_moves_the_colour(engine):
    # Emphasis ((red:0.6) vs (red:1.4)) has no measurable effect on this model: python -m bench.semantics
    # reports it beside this figure.
    without, with_negative = sem.negative_effect(engine, SEEDS)
    assert with_negative < without * 0.7, (without, with_negative)


def test_a_third_chunk_still_decides_the_colour(engine):
    scores = sem.long_prompt_accuracy(engine, 8, SEEDS)
    assert scores["colour"] >= 0.5 and scores["background"] >= 0.5, scores


def test_mix_blends_between_its_prompts(engine):
    blue, half, red = sem.mix_redness(engine, SEEDS, weights=(0.0, 0.5, 1.0))
    assert blue < -100 and red > 100 and blue + 50 < half < red - 50, (blue, half, red)


# -- every command, through Discord ------------------------------------------------------------------


@pytest.fixture
async def toy_env(emulator, tmp_path) -> AsyncIterator[BotEnv]:
    config = bot_config(
        emulator, tmp_path / "data", MODEL_DIR,
        generation={"default_steps": 20, "default_aspect": "square", "max_area": 0},
        edit={"fast_embed_steps": 60, "fast_tune_steps": 60},
        hypernet={"train_steps": 200, "lr": 1e-3, "batch_size": 4},
    )  # fmt: skip
    async with running_bot(emulator, config) as env:
        yield env


async def _run(env: BotEnv, command: str, options: dict, user: str = "alice", timeout: float = 120):
    emu = env.emu
    channel = emu.guild().channel("general")
    it = await emu.invoke(emu.user(user), channel, command, options)
    await it.wait_acked(3)
    return await emu.wait_for_message(channel, is_result, timeout=timeout)


async def _click(env: BotEnv, message, label: str):
    channel = env.emu.guild().channel("general")
    click = await env.emu.click(
        env.emu.user("alice"), message, next(b.custom_id for b in message.buttons if b.label == label)
    )
    await click.wait_acked(3)
    return await env.emu.wait_for_message(channel, is_result, timeout=120)


def _distance(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


async def _pictures(env: BotEnv, message) -> list[np.ndarray]:
    return [await attachment_pixels(env.emu, a) for a in message.attachments]


async def test_imagine_draws_what_the_member_asked(toy_env):
    result = await _run(
        toy_env, "imagine", {"prompt": "a yellow triangle on a black background", "count": 4, "seed": 3}
    )
    pictures = await _pictures(toy_env, result)
    assert {p.shape for p in pictures} == {(64, 64, 3)}  # the model's own square
    verdicts = [judge(p) for p in pictures]
    assert sum(v.colour == "yellow" and v.background == "black" for v in verdicts) >= 3, verdicts
    assert sum(v.shape == "triangle" for v in verdicts) >= 2, verdicts


async def test_edit_changes_the_colour_and_keeps_the_rest(toy_env):
    source = draw(Scene("red", "circle", "white", size="large", position="left"))
    upload = toy_env.emu.upload(png(source), "red.png", "image/png")
    result = await _run(
        toy_env, "edit", {"image": upload, "prompt": "a blue circle on a white background", "seed": 4}
    )
    [picture] = await _pictures(toy_env, result)
    verdict = judge(picture)
    # On this model Imagic moves the colour away from the input's but not reliably to the text's (green
    # or purple on the way to blue: see the model card); the rest of the picture stays.
    assert verdict.colour not in (None, "red") and verdict.background == "white", verdict
    assert verdict.shape == "circle" and verdict.position in ("left", "centre"), verdict


async def test_outpaint_keeps_the_original_and_continues_the_background(toy_env):
    source = draw(Scene("red", "circle", "blue", size="small"))
    upload = toy_env.emu.upload(png(source), "circle.png", "image/png")
    result = await _run(
        toy_env, "outpaint", {"image": upload, "direction": "right", "prompt": "a blue background", "seed": 5}
    )
    blur = toy_env.config.generation.mask_blur
    for picture in await _pictures(toy_env, result):
        assert picture.shape == (64, 96, 3)
        assert (picture[:, : 64 - blur] == np.asarray(source)[:, : 64 - blur]).all()
        assert colour_share(picture[:, 72:], "blue") > 0.6


async def test_mix_weights_decide_the_colour(toy_env):
    recipe = "a red circle on a white background:1 | a blue circle on a white background:0"
    result = await _run(toy_env, "mix", {"prompts": recipe, "seed": 7, "count": 2})
    verdicts = [judge(p) for p in await _pictures(toy_env, result)]
    assert all(v.colour == "red" for v in verdicts), verdicts


async def test_inpaint_paints_what_the_prompt_asks_inside_the_mask_only(toy_env):
    source = draw(Scene("red", "circle", "white", size="large"))
    hole = np.zeros((64, 64), np.uint8)
    hole[12:52, 12:52] = 255  # the circle's square around the centre
    emu = toy_env.emu
    options = {"image": emu.upload(png(source), "red.png", "image/png"),
               "mask": emu.upload(png(Image.fromarray(hole, "L")), "mask.png", "image/png"),
               "prompt": "a green square", "seed": 6, "count": 2}  # fmt: skip
    result = await _run(toy_env, "inpaint", options)
    keep = np.ones((64, 64), bool)
    keep[12 - 8 : 52 + 8, 12 - 8 : 52 + 8] = False  # outside the mask and its feathered edge
    for picture in await _pictures(toy_env, result):
        inside = picture[12:52, 12:52]
        assert colour_share(inside, "green") > 0.5 and colour_share(inside, "red") < 0.05
        assert judge(picture).shape == "square"
        assert (picture[keep] == np.asarray(source)[keep]).all()  # the rest is the member's own pixels


async def test_img2img_strength_decides_how_much_of_the_upload_stays(toy_env):
    source = draw(Scene("red", "circle", "white", size="large", position="left"))

    async def variant(strength: float, noise: float = 0.0, seed: int = 8) -> list[np.ndarray]:
        options = {"image": toy_env.emu.upload(png(source), "red.png", "image/png"), "strength": strength,
                   "noise": noise, "prompt": "a blue circle on a white background", "seed": seed, "count": 2}  # fmt: skip
        return await _pictures(toy_env, await _run(toy_env, "imagine", options))

    kept, redrawn = await variant(0.05), await variant(0.8)
    assert all(judge(p).colour == "red" for p in kept)  # barely denoised: still the member's red circle
    for picture in redrawn:  # mostly redrawn: the asked colour, in the upload's place, on its background
        verdict = judge(picture)
        assert (verdict.colour, verdict.background) == ("blue", "white") and "left" in verdict.position, (
            verdict
        )
    assert max(_distance(p, source) for p in kept) < min(_distance(p, source) for p in redrawn)


async def test_img2img_noise_spreads_the_results_of_one_strength(toy_env):
    source = draw(Scene("red", "circle", "white", size="large", position="left"))

    async def spread(noise: float) -> float:
        options = {"image": toy_env.emu.upload(png(source), "red.png", "image/png"), "strength": 0.3,
                   "noise": noise, "prompt": "a red circle on a white background", "seed": 9, "count": 4}  # fmt: skip
        pictures = await _pictures(toy_env, await _run(toy_env, "imagine", options))
        return float(np.mean([_distance(a, b) for i, a in enumerate(pictures) for b in pictures[i + 1 :]]))

    quiet, noisy = await spread(0.0), await spread(1.0)
    assert noisy > 1.2 * quiet, (quiet, noisy)


def test_guidance_that_stops_at_low_noise_keeps_a_lightly_redrawn_colour(engine):
    # "a blue circle" over a red one at strength 0.1: guided to the end the last steps recolour it (the
    # judge sees neither red nor blue); with guidance_min_sigma 0.5 they follow the prompt alone, and red stays
    seeds = (0, 1, 2, 3)
    guided = sem.img2img_colours(engine, seeds, (0.1,))["0.1"]
    floored = sem.img2img_colours(engine, seeds, (0.1,), guidance_min_sigma=0.5)["0.1"]
    assert guided["red"] <= 0.25 and floored["red"] >= 0.75, (guided, floored)


def test_vary_strong_moves_further_than_vary_subtle(engine):
    # the buttons draw a fresh seed each click, so the distance is measured here over fixed seeds at the
    # strengths they use; the test below clicks them
    vary = GenerationConfig()
    subtle, strong = (vary.vary_subtle_strength, vary.vary_strong_strength)
    distance = sem.vary_distances(engine, range(20, 26), (subtle, strong))
    assert distance[f"{strong:g}"] > 1.2 * distance[f"{subtle:g}"], distance


async def test_vary_buttons_keep_the_prompt_at_their_strengths(toy_env):
    grid = await _run(
        toy_env, "imagine", {"prompt": "a red circle on a white background", "seed": 10, "count": 1}
    )
    vary = toy_env.services.config.generation
    for label, strength in (
        ("Vary (Subtle)", vary.vary_subtle_strength),
        ("Vary (Strong)", vary.vary_strong_strength),
    ):
        [attachment] = (await _click(toy_env, grid, label)).attachments
        varied, parameters = await attachment_image(toy_env.emu, attachment)
        assert judge(varied).colour == "red", label  # a variation of the same prompt
        assert parameters["denoising_strength"] == strength, parameters


async def test_a_trained_hypernetwork_puts_its_style_into_other_prompts(toy_env):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:  # the style is in the pictures only: it must go into the module
        for i, (picture, caption) in enumerate(zip(*sem.striped_set(64), strict=True)):
            z.writestr(f"{i}.png", png(picture))
            z.writestr(f"{i}.txt", caption)
    emu = toy_env.emu
    options = {
        "name": "stripes",
        "images": emu.upload(archive.getvalue(), "stripes.zip", "application/zip"),
        "seed": 0,
    }
    await _run(toy_env, "hypernet train", options, timeout=600)  # 200 steps: a minute alone, more under load

    async def stripes(tag: str) -> list[float]:
        options = {"prompt": f"a red circle on a white background{tag}", "seed": 12, "count": 4}
        return [
            judge(p).stripe_score for p in await _pictures(toy_env, await _run(toy_env, "imagine", options))
        ]

    plain, styled, off = (
        await stripes(""),
        await stripes(" <hypernet:stripes:1>"),
        await stripes(" <hypernet:stripes:0>"),
    )
    assert np.mean(styled) > np.mean(plain) + 0.03 and sum(s > max(plain) for s in styled) >= 2, (
        plain,
        styled,
    )
    assert off == plain  # strength 0 is the plain model
