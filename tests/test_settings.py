"""The server settings schema (services.settings) on real storage, without Discord: defaults from config.toml,
the stored layout (unchanged: what older bots wrote reads typed), the hard limits as ceilings on write and on
read, and refusals that store nothing."""

from __future__ import annotations

import contextlib

import pytest

from services.config import Config
from services.jobs import UserError
from services.settings import ActiveModule, ServerSettings
from storage import CostPolicy, ModuleKind, moderation, settings
from storage.policy import DEFAULT_MULTIPLIERS
from tests.test_storage_support import BACKENDS, environment

GUILD, CHANNEL, MEMBER, ADMIN = 1, 55, 7, 9
HN, LORA = ModuleKind.HYPERNET, ModuleKind.LORA


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@contextlib.asynccontextmanager
async def server_settings(backend, tmp_path):
    config = Config()
    config.generation.max_area = 512 * 768  # what Services sets from the model
    policy = CostPolicy(start_balance=config.credits.start_balance, max_queued_per_user=config.limits.max_queued_per_user)
    async with environment(backend, tmp_path, policy) as env:
        yield ServerSettings(env.db, config, policy), env.db


async def test_defaults_are_the_bots_own(backend, tmp_path):
    async with server_settings(backend, tmp_path) as (s, _):
        guild = await s.guild(GUILD)
        assert guild.limits_in() == s.ceilings and await s.limits(GUILD, CHANNEL) == s.ceilings
        assert s.ceilings.max_steps == s.config.limits.max_steps and s.ceilings.max_area == 512 * 768
        conf = s.config.moderation
        assert guild.nsfw.terms.names[:2] == ("nsfw", "nude") and guild.nsfw.negative == conf.sfw_negative
        assert guild.nsfw.image_check is (conf.image_check != "false")
        assert guild.negative == "" and guild.banned.names == () and guild.active == {} and not guild.private_modules_nsfw_only
        assert guild.policy == s.base_policy == await s.policy(GUILD)
        assert await s.channels(GUILD) == []


async def test_writes_keep_the_stored_layout_and_read_back_typed(backend, tmp_path):
    async with server_settings(backend, tmp_path) as (s, db):
        await s.set_limits(GUILD, ADMIN, None, {"max_steps": 20, "max_queued": 2})
        await s.set_limits(GUILD, ADMIN, None, {"max_count": 3})  # merged with the guild's
        await s.set_limits(GUILD, ADMIN, CHANNEL, {"max_count": 1, "max_steps": 30})
        await s.set_negative(GUILD, ADMIN, "  ugly hands ")
        await s.set_nsfw(GUILD, ADMIN, terms=" Gore,, blood ", image_check=False)
        await s.set_policy(GUILD, ADMIN, {"start_balance": 42, "multipliers": {"mix": 2.0}})
        await s.set_policy(GUILD, ADMIN, {"multipliers": {"edit": 3.0}})  # merged with the guild's
        await s.set_active(HN, GUILD, MEMBER, [ActiveModule(3, 0.5), ActiveModule(4, -1.0)])
        await s.set_active(LORA, GUILD, MEMBER, [ActiveModule(5, 0.8)])
        await s.set_private_modules(GUILD, ADMIN, True)
        await s.set_channel_access(GUILD, ADMIN, CHANNEL, "allow")
        assert await s.add_banned_word(GUILD, ADMIN, " BadWord ") == "badword"
        with pytest.raises(UserError, match="already banned"):
            await s.add_banned_word(GUILD, ADMIN, "badword")
        await moderation.add_banned_word(db, GUILD, "re:(a)\\1")  # stored before RE2: it cannot run

        assert await settings.get_guild_settings(db, GUILD) == {
            "limits": {"max_steps": 20, "max_count": 3},
            "negative": "ugly hands",
            "nsfw": {"terms": "gore, blood", "image_check": False},
            "cost_policy": {
                "max_queued_per_user": 2,
                "start_balance": 42,
                "multipliers": {**DEFAULT_MULTIPLIERS, "mix": 2.0, "edit": 3.0},
            },
            f"hypernet:{MEMBER}": [[3, 0.5], [4, -1.0]],
            f"lora:{MEMBER}": [[5, 0.8]],
            "private_modules": "nsfw",
        }
        row = await settings.get_channel_settings(db, CHANNEL)
        assert row.enabled and row.settings == {"limits": {"max_count": 1, "max_steps": 30}, "allowed": True}

        guild, channel = await s.in_channel(GUILD, CHANNEL)
        assert (guild.limits_in().max_steps, guild.limits_in().max_count, guild.limits_in().max_queued) == (20, 3, 2)
        assert (guild.limits_in(channel).max_steps, guild.limits_in(channel).max_count) == (30, 1)  # over the guild's
        assert guild.negative == "ugly hands" and guild.banned.names == ("badword",)
        assert [entry for entry, _ in guild.banned.disabled] == ["re:(a)\\1"]
        assert guild.nsfw.terms.names == ("gore", "blood") and guild.nsfw.image_check is False
        assert guild.nsfw.negative == s.config.moderation.sfw_negative
        assert guild.policy.start_balance == 42 and guild.policy.multipliers["mix"] == 2.0
        assert guild.active == {(HN, MEMBER): (ActiveModule(3, 0.5), ActiveModule(4, -1.0)), (LORA, MEMBER): (ActiveModule(5, 0.8),)}
        assert guild.private_modules_nsfw_only
        assert [(c.channel_id, c.enabled, c.allowed) for c in await s.channels(GUILD)] == [(CHANNEL, True, True)]

        await s.set_limits(GUILD, ADMIN, None, {}, reset=True)
        await s.set_limits(GUILD, ADMIN, CHANNEL, {}, reset=True)
        await s.set_negative(GUILD, ADMIN, "  ")
        await s.set_active(HN, GUILD, MEMBER, [])
        await s.set_private_modules(GUILD, ADMIN, False)
        await s.set_channel_access(GUILD, ADMIN, CHANNEL, "deny")
        blob = await settings.get_guild_settings(db, GUILD)
        assert {"limits", "negative", f"hypernet:{MEMBER}", "private_modules"}.isdisjoint(blob)
        assert (await s.guild(GUILD)).active == {(LORA, MEMBER): (ActiveModule(5, 0.8),)}
        assert "max_queued_per_user" not in blob["cost_policy"]
        assert await s.limits(GUILD, CHANNEL) == s.ceilings
        assert [(c.enabled, c.allowed, dict(c.limits)) for c in await s.channels(GUILD)] == [(False, False, {})]


async def test_stored_values_above_the_bots_limits_read_as_its_limits(backend, tmp_path):
    """What a guild stored before config.toml lowered a limit (or an older bot let through) never exceeds it."""
    async with server_settings(backend, tmp_path) as (s, db):
        ceilings = s.ceilings
        await settings.update_guild_settings(db, GUILD, {
            "limits": {"max_train_steps": 1_000_000, "max_steps": 10, "retired_limit": 3},
            "cost_policy": {"max_queued_per_user": 1000},
        })  # fmt: skip
        await settings.update_channel_settings(db, GUILD, CHANNEL, patch={"limits": {"max_area": 10**9}})
        limits = await s.limits(GUILD, CHANNEL)
        assert limits.max_train_steps == ceilings.max_train_steps and limits.max_area == ceilings.max_area
        assert limits.max_queued == ceilings.max_queued and limits.max_steps == 10


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda s: s.set_limits(GUILD, ADMIN, None, {"max_train_steps": 1_000_000}), "`max_train_steps` can be at most 2000"),
        (lambda s: s.set_limits(GUILD, ADMIN, None, {"max_queued": 6}), "`max_queued` can be at most 5"),
        (lambda s: s.set_limits(GUILD, ADMIN, CHANNEL, {"max_area": 10**7}), "`max_area` can be at most 393216"),
        (lambda s: s.set_limits(GUILD, ADMIN, None, {"max_steps": 0}), "at least 1"),
        (lambda s: s.set_limits(GUILD, ADMIN, None, {"cooldown": 5}), "`cooldown` is not a limit"),
        (lambda s: s.set_limits(GUILD, ADMIN, CHANNEL, {"max_queued": 3}), "whole server"),
        (lambda s: s.set_policy(GUILD, ADMIN, {"base": 1.0}), "`base` is not a credit setting"),
        (lambda s: s.set_policy(GUILD, ADMIN, {"start_balance": -1}), "0 or more"),
        (lambda s: s.set_policy(GUILD, ADMIN, {"topup_period_s": float("nan")}), "0 or more"),
        (lambda s: s.set_policy(GUILD, ADMIN, {"multipliers": {"reroll": 2.0}}), "`reroll` has no price"),
        (lambda s: s.set_policy(GUILD, ADMIN, {"multipliers": {"mix": -1.0}}), "between 0 and 100"),
        (lambda s: s.set_active(HN, GUILD, MEMBER, [ActiveModule(1, 2.5)]), "Strength must be between -2 and 2"),
        (lambda s: s.set_active(HN, GUILD, MEMBER, [ActiveModule(i, 1.0) for i in range(5)]), "At most 4 modules"),
        (lambda s: s.set_active(LORA, GUILD, MEMBER, [ActiveModule(i, 1.0) for i in range(9)]), "At most 8 .* `/lora off"),
        (lambda s: s.set_channel_access(GUILD, ADMIN, CHANNEL, "maybe"), "`maybe` is not a channel setting"),
        (lambda s: s.add_banned_word(GUILD, ADMIN, "re:(a)\\1"), "not a valid regex"),
        (lambda s: s.set_nsfw(GUILD, ADMIN, terms="gore, \u200b"), "letters or digits"),
    ],
)
async def test_invalid_writes_are_refused_and_store_nothing(write, why, tmp_path):
    async with server_settings("sqlite", tmp_path) as (s, db):
        with pytest.raises(UserError, match=why):
            await write(s)
        assert await settings.get_guild_settings(db, GUILD) == {}
        assert await settings.get_channel_settings(db, CHANNEL) is None
        assert await moderation.banned_words(db, GUILD) == []
