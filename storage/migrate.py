"""Alembic, driven from code: no ``alembic.ini`` is needed on disk.

``await Database.upgrade()`` is the normal entry; ``python -m storage upgrade|downgrade|current|revision``
is the command line (see ``storage/__main__.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from storage.db import BEGIN_OPTION, install_sqlite_hooks

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic ``Config`` built in code. With ``url`` set, the plain ``alembic`` commands
    (``command.revision(cfg, autogenerate=True)``, ``command.history(cfg)``…) work against that database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_path_separator", "os")
    if url is not None:
        rendered = make_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


async def run_with_connection(
    url: str | URL, fn: Callable[[Connection], Any], *, busy_timeout_ms: int = 30_000
) -> Any:
    """Run ``fn(sync_connection)`` on a dedicated connection suited to migrations. On SQLite foreign keys are
    OFF (batch mode recreates tables; the env.py checks ``PRAGMA foreign_key_check`` before committing) and the
    transaction starts with ``BEGIN IMMEDIATE``."""
    url = make_url(url)
    engine = create_async_engine(url, poolclass=NullPool)
    if url.get_backend_name() == "sqlite":
        install_sqlite_hooks(engine.sync_engine, busy_timeout_ms=busy_timeout_ms, foreign_keys=False)
        engine = engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
    try:
        async with engine.connect() as conn:
            result = await conn.run_sync(fn)
            if conn.in_transaction():
                await conn.commit()
            return result
    finally:
        await engine.dispose()


def _command(name: str, revision: str) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        getattr(command, name)(cfg, revision)

    return run


async def upgrade(url: str | URL, revision: str = "head", *, busy_timeout_ms: int = 30_000) -> None:
    log.info("migrating database up to %s", revision)
    await run_with_connection(url, _command("upgrade", revision), busy_timeout_ms=busy_timeout_ms)


async def downgrade(url: str | URL, revision: str = "base", *, busy_timeout_ms: int = 30_000) -> None:
    log.info("migrating database down to %s", revision)
    await run_with_connection(url, _command("downgrade", revision), busy_timeout_ms=busy_timeout_ms)


async def current_revision(url: str | URL, *, busy_timeout_ms: int = 30_000) -> str | None:
    def get(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    return await run_with_connection(url, get, busy_timeout_ms=busy_timeout_ms)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
