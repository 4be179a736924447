"""Alembic: upgrade from empty, downgrade to base and back, models and migrations agree, CLI, 0002's
conversion of job rows and price overrides written at 0001, 0003's dropped column, and 0005's fair order per
server (queued jobs keep their turns)."""

from __future__ import annotations

import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import column, inspect, table, text

from storage import Database, JobKind, JobQueue, Ledger, moderation, settings
from storage.__main__ import main as storage_cli
from storage.migrate import head_revision, run_with_connection
from storage.models import Base, JsonType, UTCDateTime
from tests.test_storage_support import BACKENDS, close_database, open_database, spec
from worker.jobs import EditRemixParams, HypernetUse, ImagineMode, params_of

TABLES = {
    "users", "guilds", "guild_settings", "channel_settings", "accounts", "ledger_entries", "jobs", "fair_share",
    "queue_clock", "images", "favourites", "hypernetwork_modules", "audit_log", "bans", "banned_words", "workers",
    "guild_share", "served_models", "job_progress",
}  # fmt: skip


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


async def table_names(db: Database) -> set[str]:
    return set(await run_with_connection(db.url, lambda c: inspect(c).get_table_names()))


async def test_upgrade_from_empty_downgrade_and_back(backend, tmp_path):
    db = await open_database(backend, tmp_path, upgrade=False)
    try:
        assert await db.current_revision() is None
        await db.upgrade()
        assert await db.current_revision() == head_revision()
        assert TABLES <= await table_names(db)
        await db.upgrade()  # idempotent
        job, _ = await JobQueue(db).enqueue(spec(1))
        await db.downgrade("base")
        assert await db.current_revision() is None
        assert await table_names(db) <= {"alembic_version"}
        await db.upgrade("head")
        assert await db.current_revision() == head_revision()
        # a fresh schema works: the clock row is back, the queue and ledger run
        job, created = await JobQueue(db).enqueue(spec(1))
        assert created and job.start_tag == 0
        assert await Ledger(db).check_invariant() == []
    finally:
        await close_database(db)


async def test_models_match_migrations(backend, tmp_path):
    db = await open_database(backend, tmp_path)
    try:

        def diff(connection):
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)

        assert await run_with_connection(db.url, diff) == []
    finally:
        await close_database(db)


def test_command_line(tmp_path, capsys):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    assert storage_cli(["current", url]) == 0
    assert capsys.readouterr().out.strip() == "None"
    assert storage_cli(["upgrade", url]) == 0
    assert storage_cli(["current", url]) == 0
    assert capsys.readouterr().out.strip() == head_revision()
    assert storage_cli(["check", url]) == 0
    assert storage_cli(["downgrade", url, "base"]) == 0
    assert storage_cli(["current", url]) == 0
    assert capsys.readouterr().out.strip() == "None"


# Job rows as the bot wrote them before 0002: untyped dicts, "hypernet-train", "modules", "unet_passes".
SAMPLING = {"prompt": "masterpiece, a cat", "negative": "lowres", "width": 512, "height": 768, "steps": 28, "cfg": 7.0,
            "sampler": "Euler a", "seed": 5, "count": 2, "clip_skip": 2}  # fmt: skip
OLD_JOBS = {
    "imagine": {**SAMPLING, "user_prompt": "a cat", "mode": "variation", "init_image": "ab/x.png", "strength": 0.6,
                "source_job": 1, "source_index": 0, "screen": True,
                "modules": [{"name": "style", "path": "/m/style.safetensors", "strength": 0.8}]},
    "edit_remix": {**SAMPLING, "eta": 0.9, "source_job": 3, "preset": "fast", "embed_steps": 50, "tune_steps": 100},
    "inpaint": {**SAMPLING, "init_image": "ab/i.png", "mask": "ab/m.png", "strength": 0.75, "mask_blur": 16},
    "mix": {**SAMPLING, "user_prompt": "mix (blend): cat | dog", "parts": [["cat", 0.5], ["dog", 0.5]],
            "mix_mode": "blend", "normalize": True, "unet_passes": 2},
    "hypernet-train": {**SAMPLING, "user_prompt": "hypernetwork cats: cat", "train_images": ["ab/t.png"],
                       "captions": ["cat"], "train_steps": 8, "train_area": 65536, "work_steps": 12, "lr": 1e-4,
                       "batch_size": 1, "shallow_penalty": 0.001, "checkpoint_every": 100, "module_name": "cats",
                       "module_path": "/m/trained.safetensors"},
}  # fmt: skip


async def insert_old_job(db: Database, job_id: int, kind: str, params: dict) -> None:
    now = db.now()
    jobs = table(
        "jobs", *(column(c) for c in ("id", "kind", "guild_id", "user_id", "account_id", "batch_key", "cost", "status",
                                      "start_tag", "attempts")),
        column("params", JsonType), column("created_at", UTCDateTime()), column("updated_at", UTCDateTime()),
    )  # fmt: skip
    account = await db.run_read(lambda s: s.execute(text("SELECT id FROM accounts")).scalar())
    async with db.write() as s:
        await s.execute(jobs.insert().values(
            id=job_id, kind=kind, guild_id=1, user_id=7, account_id=account, params=params, batch_key="k", cost=3,
            status="done", start_tag=0, attempts=1, created_at=now, updated_at=now,
        ))  # fmt: skip


async def test_0002_converts_job_rows_and_stale_multipliers(backend, tmp_path):
    db = await open_database(backend, tmp_path, upgrade=False)
    try:
        await db.upgrade("0001")
        await Ledger(db).balance(1, 7)  # the guild, the user and the account the jobs belong to
        await settings.update_guild_settings(
            db, 1, {"cost_policy": {"base": 2.0, "multipliers": {"reroll": 2.0, "hypernet": 3.0, "imagic": 4.0, "mix": 5.0}}}, 9
        )
        for job_id, (kind, params) in enumerate(OLD_JOBS.items(), start=1):
            await insert_old_job(db, job_id, kind, params)
        await db.upgrade()

        queue = JobQueue(db)
        typed = {JobKind(job.kind): params_of(job) for job in [await queue.get(i) for i in range(1, len(OLD_JOBS) + 1)]}
        assert set(typed) == {JobKind.IMAGINE, JobKind.EDIT_REMIX, JobKind.INPAINT, JobKind.MIX, JobKind.HYPERNET_TRAIN}
        imagine = typed[JobKind.IMAGINE]
        assert imagine.mode == ImagineMode.VARIATION and imagine.strength == 0.6 and imagine.screen and imagine.count == 2
        assert imagine.hypernets == (HypernetUse("style", "/m/style.safetensors", 0.8),)
        assert typed[JobKind.EDIT_REMIX] == EditRemixParams(**{**SAMPLING, "user_prompt": SAMPLING["prompt"]}, source_job=3, eta=0.9)
        assert typed[JobKind.INPAINT].fill == "original"
        mix = typed[JobKind.MIX]
        assert mix.parts == (("cat", 0.5), ("dog", 0.5)) and mix.passes == 2 and mix.sweep == ()
        train = typed[JobKind.HYPERNET_TRAIN]
        assert train.train_images == ("ab/t.png",) and train.work_steps == 12 and train.module_name == "cats"
        # prices of kinds that exist are kept; overrides of kinds that never applied are carried or dropped, audited
        policy = await Ledger(db).policy_for(1)
        assert policy.base == 2.0
        assert {k: policy.multipliers[k] for k in ("mix", "hypernet_train", "edit", "imagine")} == {
            "mix": 5.0, "hypernet_train": 3.0, "edit": 4.0, "imagine": 1.0}  # fmt: skip
        assert not {"reroll", "hypernet", "imagic"} & set(policy.multipliers)
        (entry,) = await moderation.audit_entries(db, 1)
        assert entry.action == "credits.policy.migrated" and entry.details["dropped"] == {"reroll": 2.0}
        assert entry.details["carried"] == {"hypernet -> hypernet_train": 3.0, "imagic -> edit": 4.0}

        await db.downgrade("0001")
        rows = await db.run_read(lambda s: s.execute(text("SELECT kind, params FROM jobs ORDER BY id")).all())
        kinds = [kind for kind, _ in rows]
        assert kinds == list(OLD_JOBS)
        old_imagine = rows[0][1] if isinstance(rows[0][1], dict) else json.loads(rows[0][1])
        assert old_imagine["modules"] == OLD_JOBS["imagine"]["modules"] and "hypernets" not in old_imagine
    finally:
        await close_database(db)


async def test_0003_drops_channel_nsfw_and_keeps_the_channel_rules(backend, tmp_path):
    db = await open_database(backend, tmp_path, upgrade=False)
    try:
        await db.upgrade("0002")
        await settings.touch_guild(db, 1)
        async with db.write() as s:
            await s.execute(text(
                "INSERT INTO channel_settings (channel_id, guild_id, enabled, nsfw, settings, updated_at) "
                "VALUES (55, 1, false, true, '{\"allowed\": true}', CURRENT_TIMESTAMP)"
            ))  # fmt: skip
        await db.upgrade()
        columns = await run_with_connection(db.url, lambda c: [col["name"] for col in inspect(c).get_columns("channel_settings")])
        assert "nsfw" not in columns
        row = await settings.get_channel_settings(db, 55)
        assert row.guild_id == 1 and row.enabled is False and row.settings == {"allowed": True}
        await db.downgrade("0002")  # and back: the column returns, unset
        columns = await run_with_connection(db.url, lambda c: [col["name"] for col in inspect(c).get_columns("channel_settings")])
        assert "nsfw" in columns
    finally:
        await close_database(db)


async def test_0005_keeps_queued_turns_and_moves_tags_per_server(backend, tmp_path):
    db = await open_database(backend, tmp_path, upgrade=False)
    try:
        await db.upgrade("0004")
        for guild, user in ((1, 7), (2, 7), (2, 8)):
            await Ledger(db).balance(guild, user)
        rows = await db.run_read(lambda s: s.execute(text("SELECT id, guild_id, user_id FROM accounts ORDER BY id")).all())
        account = {(g, u): i for i, g, u in rows}
        ids = []
        async with db.write() as s:
            for guild, user, tag, status in [(1, 7, 0, "done"), (1, 7, 4, "queued"), (2, 7, 8, "queued"), (2, 8, 6, "queued")]:
                ids.append((await s.execute(text(
                    "INSERT INTO jobs (kind, guild_id, user_id, account_id, params, batch_key, cost, status, start_tag, "
                    "attempts, created_at, updated_at) VALUES ('imagine', :g, :u, :a, '{}', 'k', 2, :st, :tag, 0, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) RETURNING id"
                ), {"g": guild, "u": user, "a": account[guild, user], "st": status, "tag": tag})).scalar())  # fmt: skip
            await s.execute(text("UPDATE queue_clock SET virtual_now = 5"))
        await db.upgrade()
        shares = await db.run_read(lambda s: s.execute(text("SELECT guild_id, pass, clock FROM guild_share ORDER BY guild_id")).all())
        assert [tuple(r) for r in shares] == [(1, 0, 5), (2, 0, 5)]
        tags = await db.run_read(lambda s: s.execute(text("SELECT guild_id, user_id, finish_tag FROM fair_share ORDER BY 1, 2")).all())
        assert [tuple(r) for r in tags] == [(1, 7, 6), (2, 7, 10), (2, 8, 8)]
        queue = JobQueue(db)
        later, _ = await queue.enqueue(spec(7, guild_id=2))  # after the member's queued job in that server
        assert later.start_tag == 10
        order = []
        while batch := await queue.claim("w", max_batch=1):
            order.append(batch[0].id)
        assert order == [ids[1], ids[3], ids[2], later.id]  # the servers alternate; in server 2, the older turn first
        await db.downgrade("0004")
        assert "guild_share" not in await table_names(db)
    finally:
        await close_database(db)
