"""The image safety check in the running bot: which checker is active is said plainly, flagged results
outside age-restricted channels are posted blurred with a notice and charged as usual, and a forced
checker that cannot load stops the start."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from gen_core.safety import SafetyCheckerError
from storage import masked_url
from tests.bot_fixtures import BotEnv, bot_config, is_result, running_bot
from tests.test_bot_admin import admin
from tests.test_bot_imagine import imagine, posted_job


async def test_nudenet_is_active_by_default_and_passes_ordinary_results(emulator, tmp_path, tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="services.app")
    config = bot_config(emulator, tmp_path / "data", tiny_model_dir, moderation={"image_check": "auto"})
    async with running_bot(emulator, config) as env:
        emu = env.emu
        general = emu.guild().channel("general")
        assert "image safety check: NudeNet is active" in caplog.text
        assert "**Image safety check elsewhere:** on (NudeNet is active)" in await admin(env, emu.user("mod"), general, "nsfw")
        await imagine(env, emu.user("alice"), general, prompt="a red circle", seed=1)
        message = await emu.wait_for_message(general, is_result, timeout=60)
        job = await posted_job(env, message)
        assert job.params["screen"] and "blurred" not in message.content
        assert not any(img.get("blurred") for img in job.result["images"])


async def test_without_a_checker_the_bot_starts_and_says_so(emulator, tmp_path, tiny_model_dir, caplog, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nudenet(name, *args, **kwargs):
        if name == "nudenet":
            raise ImportError("No module named 'nudenet'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nudenet)  # the bot without the extra installed
    config = bot_config(emulator, tmp_path / "data", tiny_model_dir, moderation={"image_check": "auto"})
    async with running_bot(emulator, config) as env:
        assert "no image check is active" in caplog.text
        text = await admin(env, env.emu.user("mod"), env.emu.guild().channel("general"), "nsfw")
        assert "no image check is active" in text


async def test_flagged_results_are_blurred_with_a_notice_and_charged(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    general = guild.channel("general")

    def flag_everything(image: Image.Image) -> bool:  # a stand-in: no explicit picture is needed to prove the path
        return True

    bot_env.services.rules.safety_check = flag_everything
    await admin(bot_env, emu.user("mod"), general, "nsfw", image_check=True)  # the test config turns checks off
    before = await bot_env.balance(guild, alice)
    await imagine(bot_env, alice, general, prompt="a statue", seed=3, count=2)
    message = await emu.wait_for_message(general, is_result, timeout=30)
    job = await posted_job(bot_env, message)
    assert "🔞 2 of 2 blurred by the image safety check" in message.content
    assert [img.get("blurred") for img in job.result["images"]] == [True, True]
    assert job.cost > 0 and await bot_env.balance(guild, alice) == before - job.cost


async def test_a_forced_checker_that_cannot_load_stops_the_start(emulator, tmp_path, tiny_model_dir):
    config = bot_config(emulator, tmp_path / "data", tiny_model_dir, moderation={"image_check": "diffusers"})
    env = BotEnv(emulator, config)
    with pytest.raises(SafetyCheckerError, match="needs .*safety_checker"):
        await env.start()
    await env.stop()


def test_database_urls_are_logged_without_their_password():
    assert masked_url("postgresql+asyncpg://bot:s3cret@db.example:5432/bot") == "postgresql+asyncpg://bot:***@db.example:5432/bot"
    assert masked_url("sqlite+aiosqlite:///data/bot.db") == "sqlite+aiosqlite:///data/bot.db"
