"""Helpers shared by the storage tests (imported by the test_storage_* modules), plus checks of the
Database plumbing itself: pragmas, BEGIN IMMEDIATE, clocks.

Backends: ``sqlite`` (units on the writer thread, the default), ``sqlite-async`` (units through
``AsyncSession.run_sync`` on aiosqlite — the code path PostgreSQL takes) and ``postgres`` (the PostgreSQL
service at 127.0.0.1:5432 with trust auth, or the server in ``STORAGE_TEST_PG_URL``; each test gets a fresh
database with a random name, copied from one migrated once per session, and dropped after; never skipped).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import getpass
import os
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage import CostPolicy, Database, JobQueue, JobSpec, Ledger, masked_url

BACKENDS = ["sqlite", "sqlite-async", "postgres"]
SQLITE_BACKENDS = ["sqlite", "sqlite-async"]


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --- PostgreSQL: the server that runs as a service on these machines and in CI -------------------------------
PG_SERVER = "postgresql+asyncpg://{user}@127.0.0.1:5432/postgres"
_pg: dict[str, str] = {}


async def _pg_connect(url: str):
    import asyncpg

    return await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"), timeout=10)


async def pg_admin_url() -> str:
    """``postgresql+asyncpg://…/postgres`` of the server tests create their databases on: ``STORAGE_TEST_PG_URL``,
    else the local service (127.0.0.1:5432, trust auth) as ``postgres`` or as the current user. Never skipped: a
    machine without it fails the PostgreSQL tests, saying why."""
    if "url" in _pg:
        return _pg["url"]
    if os.environ.get("STORAGE_TEST_PG_URL"):
        candidates = [os.environ["STORAGE_TEST_PG_URL"]]
    else:
        candidates = [PG_SERVER.format(user=user) for user in ("postgres", getpass.getuser())]
    errors = []
    for url in candidates:
        try:
            conn = await _pg_connect(url)
        except Exception as exc:  # wrong user, or no server: try the next, then say why
            errors.append(f"{masked_url(url)}: {exc}")
            continue
        await conn.close()
        _pg["url"] = url
        return url
    raise RuntimeError("no PostgreSQL server for the storage tests (" + "; ".join(errors) + ")")


async def pg_admin(sql: str) -> None:
    conn = await _pg_connect(await pg_admin_url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _drop_at_exit(name: str) -> None:
    atexit.register(lambda: asyncio.run(pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")))


async def _pg_template() -> str:
    """A database migrated to head once per test session: each test's database is a copy of it (fast)."""
    if "template" not in _pg:
        name = f"t_tmpl_{uuid.uuid4().hex[:12]}"
        await pg_admin(f"CREATE DATABASE {name}")
        _drop_at_exit(name)
        db = Database(pg_database_url(await pg_admin_url(), name))
        try:
            await db.upgrade()
        finally:
            await db.close()
        _pg["template"] = name
    return _pg["template"]


def pg_database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


async def create_pg_database(*, upgrade: bool = True) -> str:
    """A fresh database with a random name on the PostgreSQL server (at head, or empty); its URL. Drop it
    with ``drop_pg_database`` (or it goes when the test session ends)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    template = f" TEMPLATE {await _pg_template()}" if upgrade else ""
    await pg_admin(f"CREATE DATABASE {name}{template}")
    return pg_database_url(await pg_admin_url(), name)


async def drop_pg_database(url: str) -> None:
    await pg_admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


_created_pg_databases: dict[int, str] = {}


async def close_database(db: Database) -> None:
    """Close; a PostgreSQL test database is dropped as well."""
    await db.close()
    url = _created_pg_databases.pop(id(db), None)
    if url is not None:
        await drop_pg_database(url)


async def open_database(
    backend: str, tmp_path: Path, clock: FakeClock | None = None, *, upgrade: bool = True
) -> Database:
    if backend == "postgres":
        url = await create_pg_database(upgrade=upgrade)
        db = Database(url, clock=clock)
        _created_pg_databases[id(db)] = url
        return db
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", clock=clock, sqlite_threads=backend == "sqlite")
    if upgrade:
        await db.upgrade()
    return db


@dataclass
class Env:
    db: Database
    clock: FakeClock
    policy: CostPolicy
    ledger: Ledger
    queue: JobQueue

    def with_policy(self, policy: CostPolicy) -> Env:
        return Env(self.db, self.clock, policy, Ledger(self.db, policy), JobQueue(self.db, policy))


DEFAULT_POLICY = CostPolicy(start_balance=100, topup_floor=0, topup_period_s=0, max_queued_per_user=50)


@contextlib.asynccontextmanager
async def environment(backend: str, tmp_path: Path, policy: CostPolicy = DEFAULT_POLICY):
    """An upgraded database plus ledger and queue; on exit the ledger invariant must hold."""
    clock = FakeClock()
    db = await open_database(backend, tmp_path, clock)
    env = Env(db, clock, policy, Ledger(db, policy), JobQueue(db, policy))
    try:
        yield env
        problems = await env.ledger.check_invariant()
        assert problems == [], problems
    finally:
        await close_database(db)


_ids = iter(range(1, 10**9))


def spec(
    user_id: int = 1,
    *,
    guild_id: int = 100,
    cost: int = 1,
    batch_key: str = "k",
    interaction_id: int | None = None,
    kind: str = "imagine",
    channel_id: int = 500,
) -> JobSpec:
    """A job spec with a fresh interaction id unless one is given."""
    return JobSpec(
        kind=kind,
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
        interaction_id=interaction_id if interaction_id is not None else next(_ids) + 10**12,
        params={"prompt": "a cat", "seed": 1},
        batch_key=batch_key,
        cost=cost,
    )


# --- the Database plumbing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", SQLITE_BACKENDS)
async def test_sqlite_pragmas(backend, tmp_path):
    db = await open_database(backend, tmp_path)
    try:
        async with db.read() as s:
            assert (await s.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await s.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await s.execute(text("PRAGMA synchronous"))).scalar() == 1  # NORMAL
            assert (await s.execute(text("PRAGMA busy_timeout"))).scalar() == 30_000

        def pragmas(s):
            return [
                s.execute(text(f"PRAGMA {p}")).scalar()
                for p in ("journal_mode", "foreign_keys", "synchronous")
            ]

        assert await db.run_write(pragmas) == ["wal", 1, 1]
    finally:
        await db.close()


def _other_writer_blocked(path: Path) -> bool:
    """Can another connection take the write lock right now? (timeout 0: no waiting)"""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as e:
        assert "locked" in str(e)
        return True
    finally:
        other.close()


@pytest.mark.parametrize("backend", SQLITE_BACKENDS)
async def test_write_units_begin_immediate_and_reads_do_not(backend, tmp_path):
    db = await open_database(backend, tmp_path)
    path = tmp_path / "bot.db"
    try:
        # the write lock is held from the first statement of a write unit, even a read-only statement
        async with db.write() as s:
            await s.execute(text("SELECT 1"))
            assert _other_writer_blocked(path)
        assert await db.run_write(lambda s: (s.execute(text("SELECT 1")), _other_writer_blocked(path))[1])
        # read units are deferred: they never take the write lock
        async with db.read() as s:
            await s.execute(text("SELECT count(*) FROM jobs"))
            assert not _other_writer_blocked(path)
        assert not await db.run_read(
            lambda s: (s.execute(text("SELECT count(*) FROM jobs")), _other_writer_blocked(path))[1]
        )
        assert not _other_writer_blocked(path)
    finally:
        await db.close()


@pytest.mark.parametrize("backend", SQLITE_BACKENDS)
async def test_failed_write_unit_rolls_back(backend, tmp_path):
    db = await open_database(backend, tmp_path)
    try:
        with pytest.raises(RuntimeError):
            async with db.write() as s:
                await s.execute(
                    text("INSERT INTO users (id, created_at, updated_at) VALUES (1, '2026', '2026')")
                )
                raise RuntimeError("boom")

        def boom(s):
            s.execute(text("INSERT INTO users (id, created_at, updated_at) VALUES (2, '2026', '2026')"))
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.run_write(boom)
        assert await db.run_read(lambda s: s.execute(text("SELECT count(*) FROM users")).scalar()) == 0
    finally:
        await db.close()


async def test_database_creates_folder_and_uses_clock(tmp_path):
    clock = FakeClock(datetime(2030, 5, 6, tzinfo=UTC))
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'a' / 'b' / 'bot.db'}", clock=clock)
    try:
        await db.upgrade()
        assert (tmp_path / "a" / "b" / "bot.db").exists()
        assert db.now() == clock.now
        ledger = Ledger(db)
        await ledger.balance(1, 2)
        (entry,) = await ledger.entries(1, 2)
        assert entry.created_at == clock.now and entry.created_at.tzinfo is not None
    finally:
        await db.close()


def test_timestamps_are_stored_as_utc(tmp_path):
    # naive datetimes are taken as UTC; aware ones are converted
    from storage.models import UTCDateTime

    t = UTCDateTime()

    class D:
        name = "sqlite"

    aware = datetime(2026, 1, 1, 14, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    assert t.process_bind_param(aware, D()) == datetime(2026, 1, 1, 14, 0)
    assert t.process_result_value(datetime(2026, 1, 1, 14, 0), D()) == datetime(2026, 1, 1, 14, 0, tzinfo=UTC)


async def test_postgres_units_replace_connections_the_server_dropped(tmp_path):
    """A PostgreSQL restart (here: every backend of the database terminated) leaves dead connections in the
    pool; the next units find one, and run once more on a fresh connection instead of failing, exactly once
    each. A unit that fails for another reason is not run again."""
    db = await open_database("postgres", tmp_path)
    try:
        runs = {"write": 0, "read": 0}

        def write(s):
            runs["write"] += 1
            s.execute(text("INSERT INTO users (id, created_at, updated_at) VALUES (:id, now(), now())"), {"id": runs["write"]})

        def read(s):
            runs["read"] += 1
            return s.execute(text("SELECT count(*) FROM users")).scalar()

        await asyncio.gather(db.run_read(read), db.run_read(read))  # two pooled connections
        await pg_admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db.url.database}' "
            "AND pid <> pg_backend_pid()"
        )
        runs.update(write=0, read=0)
        await db.run_write(write)
        assert runs["write"] == 2  # once on the dead connection (rolled back with it), once for real
        assert await db.run_read(read) == 1 and runs["read"] in (1, 2)  # the pool may still hold a dead one
        runs["write"] = 1  # inserts user 2 again: a unit that is wrong, not unlucky, runs once and fails
        with pytest.raises(IntegrityError):
            await db.run_write(write)
        assert runs["write"] == 2
    finally:
        await close_database(db)
