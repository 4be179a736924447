"""Filters end to end: what the model would read is what is checked; admin regexes cannot stall the bot."""

from __future__ import annotations

from PIL import Image

from storage import moderation
from tests.bot_fixtures import BotEnv, followup_refusal, png
from tests.test_bot_admin import admin, assert_nothing_queued, audit_actions, imagine, jobs_of, refusal
from tests.test_bot_imagine import is_result, posted_job
from tests.test_bot_mix import mix


async def test_bracket_and_unicode_evasions_are_refused(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    general = guild.channel("general")
    await admin(bot_env, mod, general, "words add", word="spaceship")
    before = await bot_env.balance(guild, alice)
    for prompt in ("nu()de woman", "a nu[]de", "(nu()de:1.5)", "ｎｕｄｅ", "nu\u200bde", "nudes"):
        assert "`nude` is NSFW content" in await refusal(await imagine(bot_env, alice, general, prompt=prompt))
    for prompt in ("(space()ships:1.2)", "SPACE\u200bSHIP BREAK cat"):
        assert "`spaceship`, which is banned" in await refusal(await imagine(bot_env, alice, general, prompt=prompt))
    await assert_nothing_queued(bot_env, guild, alice, before)
    await imagine(bot_env, alice, general, prompt="a therapist in Scunthorpe with a cocktail")
    assert len(await jobs_of(bot_env, guild, alice, 1)) == 1


async def test_catastrophic_regexes_run_in_linear_time_and_old_ones_are_disabled(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    general = guild.channel("general")
    await admin(bot_env, mod, general, "words add", word="re:(a+)+$")
    text = await refusal(await emu.invoke(mod, general, "admin words add", {"word": "re:(a)\\1"}))
    assert "not a valid regex" in text and "backreferences" in text
    # stored before RE2 was the engine: it cannot run, so it is disabled, audited and listed
    await moderation.add_banned_word(bot_env.services.db, guild.id, "re:(?<=x)y", mod.id)
    await imagine(bot_env, alice, general, prompt="a" * 40 + "!")  # Python's re: minutes; RE2: microseconds
    assert len(await jobs_of(bot_env, guild, alice, 1)) == 1
    assert "`(a+)+$`" in await refusal(await imagine(bot_env, alice, general, prompt="a cat, aaa"))
    assert "words.disabled" in await audit_actions(bot_env, guild)
    listed = await admin(bot_env, mod, general, "words list")
    assert "`re:(?<=x)y` (regex) — **disabled**" in listed and "`re:(a+)+$` (regex)\n" in listed + "\n"


async def test_negatives_mix_parts_captions_and_look_alikes_are_checked_and_other_scripts_pass(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    general = guild.channel("general")
    await admin(bot_env, mod, general, "words add", word="spaceship")
    before = await bot_env.balance(guild, alice)
    for prompt in ("nud\u0435 woman", "a n\u057dde", "(\u039dUD\u0415:1.2)"):  # Cyrillic е, Armenian ս, Greek Ν
        assert "`nude` is NSFW content" in await refusal(await imagine(bot_env, alice, general, prompt=prompt))
    assert "`spaceship`, which is banned" in await refusal(await imagine(bot_env, alice, general, prompt="a sp\u0430ceship"))
    negative = await refusal(await imagine(bot_env, alice, general, prompt="a cat", negative="(space()ship:1.3)"))
    assert "Your negative prompt contains `spaceship`" in negative
    mixes = [("cat:2 | (nu()de:1.2):-1", "NSFW"), ("cat::2 n\u057dde::-0.5", "NSFW"), ("cat :2 AND spaceship :-1", "banned")]
    for recipe, why in mixes:  # a negative part is a prompt too: Sweep renders it at positive weights
        text = await refusal(await emu.invoke(alice, general, "mix", {"prompts": recipe}))
        assert why in text, (recipe, text)
    text = await refusal(await emu.invoke(alice, general, "mix", {"prompts": "cat | dog", "negative": "spaceships"}))
    assert "Your negative prompt contains `spaceship`" in text
    picture = emu.upload(png(Image.new("RGB", (64, 64), "red")), "a.png", "image/png")
    train = await emu.invoke(alice, general, "hypernet train",
                             {"name": "x", "images": picture, "image2": picture, "captions": "a red square | a nude woman"})  # fmt: skip
    assert "`nude` is NSFW content" in await followup_refusal(train)
    await assert_nothing_queued(bot_env, guild, alice, before)

    harmless = ["красивая кошка в саду, акварель", "μια γάτα στον ήλιο", "猫と桜、水彩画"]
    for prompt in harmless:
        await imagine(bot_env, alice, general, prompt=prompt, negative="nsfw, nude")  # steering away is fine
    await mix(bot_env, alice, general, prompts="a cat | a kitten:-0.5", negative="nude")
    assert len(await jobs_of(bot_env, guild, alice, len(harmless) + 1)) == len(harmless) + 1


async def test_what_the_bot_adds_to_a_negative_is_not_the_members_words(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, mod = emu.guild(), emu.user("alice"), emu.user("mod")
    general = guild.channel("general")
    for word in ("nude", "watermark", "spaceship"):  # in the NSFW negative, the heavy preset, the server's negative
        await admin(bot_env, mod, general, "words add", word=word)
    await admin(bot_env, mod, general, "negative", prompt="spaceship")
    await imagine(bot_env, alice, general, undesired="heavy")
    result = await emu.wait_for_message(general, is_result, timeout=30)
    assert "nude" in (await posted_job(bot_env, result)).params["negative"]
    reroll = await emu.click(alice, result, next(b.custom_id for b in result.buttons if b.emoji == "🔄"))
    await reroll.wait_acked(3)
    again = await emu.wait_for_message(general, lambda m: is_result(m) and m.id != result.id, timeout=30)
    assert (await posted_job(bot_env, again)).params["prompt"] == (await posted_job(bot_env, result)).params["prompt"]
