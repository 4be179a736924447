"""Settings, moderation, hypernetwork modules, and the queue helpers the bot uses after a restart."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from storage import ModuleStatus, hypernetworks, members, moderation, settings
from tests.test_storage_support import BACKENDS, environment, spec


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


async def test_guild_and_channel_settings(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        db = env.db
        assert await settings.get_guild_settings(db, 1) == {}
        assert await settings.update_guild_settings(db, 1, {"nsfw": False, "max_steps": 50}, actor_id=9) == {
            "nsfw": False,
            "max_steps": 50,
        }
        assert await settings.update_guild_settings(db, 1, {"max_steps": None, "model": "v1"}) == {
            "nsfw": False,
            "model": "v1",
        }
        assert await settings.get_guild_settings(db, 1) == {"nsfw": False, "model": "v1"}
        overrides = await settings.set_guild_policy(db, 1, actor_id=9, base=2.0, multipliers={"mix": 2})
        assert overrides == {"base": 2.0, "multipliers": {"mix": 2}}
        policy = await settings.guild_policy(db, 1, env.policy)
        assert policy.base == 2.0 and policy.multipliers["mix"] == 2.0 and policy.start_balance == 100
        assert (await env.ledger.policy_for(1)).base == 2.0
        assert await settings.set_guild_policy(db, 1, base=None) == {"multipliers": {"mix": 2}}
        with pytest.raises(ValueError, match="unknown cost policy fields"):
            await settings.set_guild_policy(db, 1, bogus=1)
        assert (await settings.get_guild_settings(db, 1))["model"] == "v1"

        assert await settings.get_channel_settings(db, 55) is None
        channel = await settings.update_channel_settings(
            db, 1, 55, patch={"cooldown_s": 5}, actor_id=9
        )
        assert channel.enabled and channel.settings == {"cooldown_s": 5}
        channel = await settings.update_channel_settings(db, 1, 55, enabled=False, patch={"cooldown_s": None})
        assert not channel.enabled and channel.settings == {}
        assert (await settings.get_channel_settings(db, 55)).enabled is False

        await settings.touch_user(db, 123456789012345678, "Alice")
        await settings.touch_user(db, 123456789012345678)  # keeps the name
        await settings.touch_guild(db, 1, "Art Club")


async def test_moderation(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        db = env.db
        assert not await moderation.is_banned(db, 1, 2)
        await moderation.ban(db, 1, 2, actor_id=9, reason="spam")
        assert await moderation.is_banned(db, 1, 2) and not await moderation.is_banned(db, 3, 2)
        assert (await moderation.get_ban(db, 1, 2)).reason == "spam"
        await moderation.ban(
            db, 1, 2, actor_id=9, reason="spam again", expires_at=env.clock.now + timedelta(hours=1)
        )
        assert (await moderation.get_ban(db, 1, 2)).reason == "spam again"
        env.clock.advance(3601)
        assert not await moderation.is_banned(db, 1, 2)  # expired
        assert await moderation.unban(db, 1, 2) and not await moderation.unban(db, 1, 2)

        assert await moderation.add_banned_word(db, 1, "  Gore ")
        assert not await moderation.add_banned_word(db, 1, "gore")
        assert await moderation.add_banned_word(db, 1, "blood", actor_id=9)
        assert await moderation.banned_words(db, 1) == ["blood", "gore"]
        assert await moderation.remove_banned_word(db, 1, "GORE")
        assert await moderation.banned_words(db, 1) == ["blood"]
        with pytest.raises(ValueError):
            await moderation.add_banned_word(db, 1, "   ")

        await moderation.audit(db, 1, 9, "credits.grant", target_user_id=2, details={"amount": 50})
        await moderation.audit(db, 1, 9, "queue.pause")
        await moderation.audit(db, 2, 9, "queue.pause")
        entries = await moderation.audit_entries(db, 1)
        assert [e.action for e in entries] == ["queue.pause", "credits.grant"]
        assert entries[1].details == {"amount": 50} and entries[1].target_user_id == 2


async def test_hypernetwork_modules(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        db = env.db
        mine = await hypernetworks.register(db, 1, 10, "anime", "/m/anime.pt", "a" * 64, {"layers": [1, 2]})
        theirs = await hypernetworks.register(db, 1, 20, "furry", "/m/furry.pt", "b" * 64)
        await hypernetworks.register(db, 2, 20, "anime", "/m/anime2.pt", "c" * 64)  # same name, other guild: fine
        with pytest.raises(IntegrityError):
            await hypernetworks.register(db, 1, 30, "anime", "/m/x.pt", "d" * 64)
        assert mine.status == ModuleStatus.PRIVATE and not mine.shared and mine.meta == {"layers": [1, 2]}
        assert [m.name for m in await hypernetworks.visible(db, 1, 10)] == ["anime"]
        await hypernetworks.update(db, theirs.id, shared=True, status=ModuleStatus.PENDING)
        assert [m.name for m in await hypernetworks.visible(db, 1, 10)] == ["anime"]  # not approved yet
        assert [m.name for m in await hypernetworks.list_all(db, 1, status="pending")] == ["furry"]
        updated = await hypernetworks.update(db, theirs.id, status="approved", metadata={"note": "ok"})
        assert updated.status == "approved" and updated.meta == {"note": "ok"}
        assert [m.name for m in await hypernetworks.visible(db, 1, 10)] == ["anime", "furry"]
        assert (await hypernetworks.get(db, 1, "furry")).sha256 == "b" * 64
        assert (await hypernetworks.get_by_id(db, mine.id)).path == "/m/anime.pt"
        assert await hypernetworks.update(db, 999_999, shared=True) is None
        assert await hypernetworks.delete(db, mine.id) and not await hypernetworks.delete(db, mine.id)
        assert await hypernetworks.get(db, 1, "anime") is None
        with pytest.raises(ValueError):
            await hypernetworks.update(db, theirs.id, status="bogus")


async def test_string_request_keys_and_posting_helpers(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        q = env.queue
        a, _ = await q.enqueue(spec(1, interaction_id="1234567890:0"))
        b, _ = await q.enqueue(spec(1, interaction_id="1234567890:1"))
        again, created = await q.enqueue(spec(1, interaction_id="1234567890:1"))
        assert not created and again.id == b.id and b.interaction_id == "1234567890:1"
        c, _ = await q.enqueue(spec(1, interaction_id=987654321098765432))
        assert c.interaction_id == "987654321098765432"
        assert (await q.enqueue(spec(1, interaction_id="987654321098765432")))[0].id == c.id
        with pytest.raises(ValueError):
            await q.enqueue(spec(1, interaction_id="x" * 201))

        for job in await q.claim("w", max_batch=3):
            await q.complete(job.id, {"images": []})
        assert await q.mark_posted(b.id, 111)
        assert (await q.by_message(111)).id == b.id and await q.by_message(222) is None
        env.clock.advance(30 * 86_400)  # a month-long outage: the results are still announced
        assert [j.id for j in await q.due_announcements("w")] == [a.id, c.id]


async def test_forgetting_a_member_erases_their_rows_in_one_guild_and_keeps_the_books(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        db, repo = env.db, env.queue.images
        job, _ = await env.queue.enqueue(replace(spec(1), params={"prompt": "secret", "init_image": "up"}))
        await env.queue.complete(job.id, {"images": [{"key": "a"}]}, images=[{"key": "a", "width": 8, "height": 8, "seed": 1, "params": {}}])
        waiting, _ = await env.queue.enqueue(replace(spec(1), params={"prompt": "queued"}))
        other_guild, _ = await env.queue.enqueue(replace(spec(1, guild_id=200), params={"prompt": "elsewhere"}))
        (mine,) = await repo.for_job(job.id)
        bobs = await repo.record(job_id=None, guild_id=100, user_id=2, key="b", width=8, height=8, seed=1, params={})
        await repo.add_favourite(1, bobs.id)
        await repo.add_favourite(2, mine.id)
        for name, shared, status in (("private", False, "private"), ("public", True, "approved"), ("twin", False, "private")):
            await hypernetworks.register(db, 100, 1, name, f"/m/{'twin' if name == 'twin' else name}", "0" * 64, shared=shared, status=status)
        await hypernetworks.register(db, 100, 2, "bobs-twin", "/m/twin", "0" * 64)

        forgotten = await members.forget(db, 100, 1)
        assert (forgotten.images, forgotten.jobs, forgotten.favourites) == (1, (job.id,), 1)
        assert forgotten.keys == {"a", "up"} and forgotten.module_paths == ("/m/private",)  # bob's row names /m/twin
        assert set(forgotten.modules) == {"private", "twin"} and forgotten.kept_modules == ("public",)
        erased = await env.queue.get(job.id)
        assert (erased.params, erased.result, erased.status, erased.cost) == ({}, None, "done", job.cost)
        assert (await env.queue.get(waiting.id)).params == {"prompt": "queued"}  # active: cancel it first
        assert (await env.queue.get(other_guild.id)).params == {"prompt": "elsewhere"}
        assert await repo.favourites(1) == [] and await repo.favourites(2) == [] and await repo.get(mine.id) is None
        assert (await hypernetworks.get(db, 100, "public")).owner_id == members.FORMER_MEMBER
        assert [m.name for m in await hypernetworks.list_all(db, 100)] == ["bobs-twin", "public"]
        await env.queue.cancel(waiting.id, None)
        await env.queue.cancel(other_guild.id, None)
