"""The pieces under /admin without Discord: banned-word matching, entry validation, the blur of a flagged
image, and the storage queries the admin commands added (ban list, channel rows, per-guild queue limit)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from PIL import Image, ImageStat

from gen_core.types import GeneratedImage
from services.jobs import UserError
from services.rules import blurred
from services.settings import split_terms, validate_banned_entry
from services.text_filter import compile_entries
from storage import CostPolicy, QueueFull, moderation, settings
from tests.test_storage_support import BACKENDS, environment, spec


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.mark.parametrize(
    ("entry", "text", "hit"),
    [
        ("cat", "A Cat on a mat", True),
        ("cat", "a category", False),
        ("cat", "catalogue, cat.", True),
        ("bad word", "a BAD WORD here", True),
        ("bad word", "a bad wordy", False),
        ("c++", "I like c++ code", True),
        ("re:sp[a4]m+", "SP4MMM", True),
        ("re:sp[a4]m+", "spoon", False),
        ("re:^a", "a cat", True),
        ("re:^a", "the a", False),
    ],
)
def test_banned_entries_match_whole_words_or_regexes_ignoring_case(entry, text, hit):
    assert (compile_entries((entry,)).first_match(text) == entry) is hit


def test_banned_entry_validation():
    assert validate_banned_entry("  Cat ") == "cat"
    assert validate_banned_entry("re:sp[a4]m") == "re:sp[a4]m"
    for bad, why in (("", "Give a word"), ("re:\\W", "lower case"), ("re:(", "not a valid regex"), ("re:(a)\\1", "backreferences"), ("re:(?=a)", "not a valid regex")):
        with pytest.raises(UserError, match=why):
            validate_banned_entry(bad)


def test_terms_are_split_and_case_folded():
    assert split_terms(" NSFW, nude ,, Naked ") == ("nsfw", "nude", "naked")


def test_blurred_keeps_size_seed_and_parameters_but_not_detail():
    noise = Image.effect_noise((128, 96), 100).convert("RGB")
    image = GeneratedImage(noise, seed=7, parameters={"prompt": "x"})
    out = blurred(image)
    assert out.image.size == (128, 96) and out.seed == 7 and out.parameters == {"prompt": "x", "Safety check": "blurred"}
    assert max(ImageStat.Stat(out.image).stddev) < max(ImageStat.Stat(noise).stddev) / 5


async def test_ban_list_leaves_out_expired_and_other_guilds(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        db = env.db
        await moderation.ban(db, 1, 10, actor_id=9, reason="spam")
        await moderation.ban(db, 1, 11, actor_id=9, expires_at=db.now() + timedelta(hours=1))
        await moderation.ban(db, 2, 12, actor_id=9)
        assert [(b.user_id, b.reason) for b in await moderation.bans(db, 1)] == [(10, "spam"), (11, None)]
        env.clock.advance(2 * 3600)
        assert [b.user_id for b in await moderation.bans(db, 1)] == [10]


async def test_guild_channel_settings_lists_only_that_guild(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        db = env.db
        await settings.update_channel_settings(db, 1, 501, enabled=False, actor_id=9)
        await settings.update_channel_settings(db, 1, 500, patch={"allowed": True})
        await settings.update_channel_settings(db, 2, 600, patch={"limits": {"max_steps": 5}})
        rows = await settings.guild_channel_settings(db, 1)
        assert [(r.channel_id, r.enabled, r.settings) for r in rows] == [(500, True, {"allowed": True}), (501, False, {})]


async def test_queued_job_limit_counts_per_guild(backend, tmp_path):
    async with environment(backend, tmp_path, CostPolicy(start_balance=100, topup_floor=0, max_queued_per_user=1)) as env:
        await env.queue.enqueue(spec(1, guild_id=100))
        await env.queue.enqueue(spec(1, guild_id=200))  # another server: its own limit
        with pytest.raises(QueueFull):
            await env.queue.enqueue(spec(1, guild_id=100))
