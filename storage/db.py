"""The database handle: engines, SQLite pragmas, write/read transaction units, migrations.

Two ways to run a transaction, same guarantees:

* ``async with db.write() as s`` / ``db.read()`` — an ``AsyncSession`` (aiosqlite / asyncpg). Handy for ad-hoc
  queries.
* ``await db.run_write(fn)`` / ``db.run_read(fn)`` — ``fn(session)`` is a plain synchronous function on a
  SQLAlchemy ``Session``; the whole unit runs in one go. The repositories in this package use this form. On
  SQLite the unit runs on a dedicated writer thread (readers on a small pool) with the sync pysqlite driver, so
  a transaction costs one thread hop instead of one per statement (aiosqlite hops to its thread for every
  cursor, execute and fetch: ~0.2 ms per statement against ~1 µs of SQLite work). On other backends it runs
  through ``AsyncSession.run_sync`` on the async driver. Pass ``sqlite_threads=False`` to use ``run_sync`` on
  SQLite too (the code path PostgreSQL takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

# execution option read by the SQLite "begin" hook: which BEGIN to emit
BEGIN_OPTION = "storage_sqlite_begin"


# PostgreSQL: a transaction chosen as a deadlock's victim, or that cannot be serialised, is run again
RETRY_SQLSTATES = {"40001", "40P01"}
RETRIES = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (down, restarting, the network cut) rather than
    that the statement was wrong: the caller may try again later."""
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc.orig, OSError) or (_sqlstate(exc) or "").startswith("08")
    return isinstance(exc, OSError | ConnectionError)


def masked_url(url: str | URL) -> str:
    """A database URL fit for logs: the password replaced by ``***``."""
    return make_url(url).render_as_string(hide_password=True)


def install_sqlite_hooks(engine: Engine, *, busy_timeout_ms: int, foreign_keys: bool = True) -> None:
    """Take transaction control away from the sqlite3 driver and set the connection pragmas (``engine`` is a
    sync ``Engine``; for an ``AsyncEngine`` pass its ``sync_engine``).

    * ``isolation_level = None`` stops pysqlite/aiosqlite from emitting its own (deferred) BEGIN before DML;
      the ``begin`` hook then emits ``BEGIN IMMEDIATE`` for engines carrying ``BEGIN_OPTION="IMMEDIATE"``
      (write units) and a plain deferred ``BEGIN`` otherwise (read units, still a consistent snapshot). A
      deferred read-then-write transaction in WAL mode fails with SQLITE_BUSY whatever the timeout; an
      immediate one waits for the write lock up front.
    * WAL + ``synchronous=NORMAL``: readers never block the writer, commits do not fsync (durable across
      process crashes; an OS crash may lose the last transactions but never corrupts the file).
    * ``busy_timeout``: another process waits for the write lock instead of failing at once.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def _ensure_sqlite_dir(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


class Database:
    """One per process. ``url`` is any SQLAlchemy async URL: ``sqlite+aiosqlite:///path/bot.db`` (the
    embedded default; the folder is created) or ``postgresql+asyncpg://…``.

    * ``write()`` — an ``AsyncSession`` inside a write transaction, committed on normal exit, rolled back on an
      exception. On SQLite it starts with ``BEGIN IMMEDIATE`` and the write units of this process are also
      serialised by an ``asyncio.Lock`` so that they queue in the event loop instead of sleeping in SQLite's
      busy handler. Do not nest write units (one would wait for the other).
    * ``read()`` — an ``AsyncSession`` in a deferred transaction (a consistent snapshot; never blocks writers).
    * ``run_write(fn)`` / ``run_read(fn)`` — the same, for a synchronous ``fn(Session)`` (see module docs).
    * ``now()`` — the clock every timestamp and lease comes from; replace ``clock`` in tests.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        echo: bool = False,
        busy_timeout_ms: int = 30_000,
        clock: Callable[[], datetime] | None = None,
        sqlite_threads: bool = True,
        reader_threads: int = 2,
        **engine_kwargs: Any,
    ) -> None:
        self.url = make_url(url)
        self.dialect_name = self.url.get_backend_name()
        self.is_sqlite = self.dialect_name == "sqlite"
        self.busy_timeout_ms = busy_timeout_ms
        self.clock: Callable[[], datetime] = clock or utcnow
        if self.is_sqlite:
            _ensure_sqlite_dir(self.url)
        self.engine: AsyncEngine = create_async_engine(self.url, echo=echo, **engine_kwargs)
        write_engine = self.engine
        if self.is_sqlite:
            install_sqlite_hooks(self.engine.sync_engine, busy_timeout_ms=busy_timeout_ms)
            write_engine = self.engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        self._write_sessions = async_sessionmaker(write_engine, expire_on_commit=False, autoflush=False)
        self._read_sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None

        self.sync_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        in_memory = self.is_sqlite and (self.url.database or ":memory:") == ":memory:"
        if self.is_sqlite and sqlite_threads and not in_memory:
            sync_url = self.url.set(drivername="sqlite+pysqlite")
            self.sync_engine = create_engine(
                sync_url, echo=echo, connect_args={"check_same_thread": False}, pool_size=reader_threads + 2
            )
            install_sqlite_hooks(self.sync_engine, busy_timeout_ms=busy_timeout_ms)
            self._sync_write_sessions = sessionmaker(
                self.sync_engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"}),
                expire_on_commit=False,
                autoflush=False,
            )
            self._sync_read_sessions = sessionmaker(self.sync_engine, expire_on_commit=False, autoflush=False)
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
            self._readers = ThreadPoolExecutor(
                max_workers=max(1, reader_threads), thread_name_prefix="sqlite-reader"
            )

    def now(self) -> datetime:
        return self.clock()

    # async sessions --------------------------------------------------------------------------------------
    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        async with self._locked():
            async with self._write_sessions() as session, session.begin():
                yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        if self._write_lock is None:
            yield
        else:
            async with self._write_lock:
                yield

    # sync units ------------------------------------------------------------------------------------------
    async def run_write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one write transaction; committed if it returns, rolled back if it raises. On
        PostgreSQL a deadlock's victim or a serialisation failure is rolled back and run again (``fn`` must not
        have effects outside the transaction)."""
        if self._writer is None:
            return await self._run_async(self.write, fn)
        async with self._locked():
            return await self._in_thread(
                self._writer, functools.partial(self._sync_unit, self._sync_write_sessions, fn)
            )

    async def run_read(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one read transaction (a consistent snapshot)."""
        if self._readers is None:
            return await self._run_async(self.read, fn)
        return await self._in_thread(
            self._readers, functools.partial(self._sync_unit, self._sync_read_sessions, fn)
        )

    @staticmethod
    async def _run_async(
        unit: Callable[[], contextlib.AbstractAsyncContextManager[AsyncSession]], fn: Callable[[Session], T]
    ) -> T:
        """``fn`` in one transaction of ``unit`` on the async driver (PostgreSQL), run again when it cannot
        have taken effect: a deadlock's victim, a serialisation failure, or a pooled connection the server
        had dropped (a restart, an idle timeout; the pool then replaces its connections) found before the
        commit. Checking each connection before use instead ("pre-ping") would cost a round trip per
        transaction."""
        for attempt in range(RETRIES):
            finished = False

            def run(session: Session) -> T:
                nonlocal finished
                result = fn(session)
                finished = True
                return result

            try:
                async with unit() as session:
                    return await session.run_sync(run)
            except DBAPIError as exc:
                stale = exc.connection_invalidated and not finished  # a lost commit stays an error
                if not (stale or _sqlstate(exc) in RETRY_SQLSTATES) or attempt == RETRIES - 1:
                    raise
                log.info("transaction retried after %s", "a dropped connection" if stale else _sqlstate(exc))
                await asyncio.sleep(0 if stale else 0.01 * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _sync_unit(factory: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
        with factory() as session, session.begin():
            return fn(session)

    @staticmethod
    async def _in_thread(executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        future = asyncio.get_running_loop().run_in_executor(executor, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # the unit cannot be stopped half-way; keep holding the write lock until it has finished
            with contextlib.suppress(BaseException):
                await future
            raise

    # notifications ---------------------------------------------------------------------------------------
    async def listen(self, channel: str, callback: Callable[[str], None]) -> Callable[[], Awaitable[None]] | None:
        """PostgreSQL: call ``callback(payload)`` for every ``NOTIFY`` on ``channel`` (on its own connection);
        returns the coroutine function that stops listening. SQLite has no notifications: None (poll instead).
        A connection lost later stops the notifications silently: listeners poll too, more slowly."""
        if self.is_sqlite:
            return None
        import asyncpg

        conn = await asyncpg.connect(self.url.set(drivername="postgresql").render_as_string(hide_password=False))
        await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: callback(payload))

        async def stop() -> None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)

        return stop

    # migrations ------------------------------------------------------------------------------------------
    async def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision`` (``alembic upgrade head``)."""
        from storage.migrate import upgrade

        async with self._locked():
            await upgrade(self.url, revision, busy_timeout_ms=self.busy_timeout_ms)

    async def downgrade(self, revision: str = "base") -> None:
        from storage.migrate import downgrade

        async with self._locked():
            await downgrade(self.url, revision, busy_timeout_ms=self.busy_timeout_ms)

    async def current_revision(self) -> str | None:
        from storage.migrate import current_revision

        return await current_revision(self.url, busy_timeout_ms=self.busy_timeout_ms)

    # lifecycle -------------------------------------------------------------------------------------------
    async def close(self) -> None:
        async with self._locked():
            await self.engine.dispose()
            for executor in (self._writer, self._readers):
                if executor is not None:
                    await asyncio.to_thread(executor.shutdown, wait=True)
            if self.sync_engine is not None:
                self.sync_engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Database({masked_url(self.url)!r})"
