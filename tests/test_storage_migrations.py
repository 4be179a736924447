"""Alembic: upgrade from empty, downgrade to base and back, models and migrations agree, CLI."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage import Database, JobQueue, Ledger
from storage.__main__ import main as storage_cli
from storage.migrate import head_revision, run_with_connection
from storage.models import Base
from tests.test_storage_support import BACKENDS, close_database, open_database, spec

TABLES = {
    "users", "guilds", "guild_settings", "channel_settings", "accounts", "ledger_entries", "jobs", "fair_share",
    "queue_clock", "images", "favourites", "hypernetwork_modules", "audit_log", "bans", "banned_words",
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
        assert await db.current_revision() == head_revision() == "0001"
        assert TABLES <= await table_names(db)
        await db.upgrade()  # idempotent
        job, _ = await JobQueue(db).enqueue(spec(1))
        await db.downgrade("base")
        assert await db.current_revision() is None
        assert await table_names(db) <= {"alembic_version"}
        await db.upgrade("head")
        assert await db.current_revision() == "0001"
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
    assert capsys.readouterr().out.strip() == "0001"
    assert storage_cli(["check", url]) == 0
    assert storage_cli(["downgrade", url, "base"]) == 0
    assert storage_cli(["current", url]) == 0
    assert capsys.readouterr().out.strip() == "None"
