"""Alembic environment for the storage package (async engines, SQLite batch mode).

Normally driven by ``storage.migrate``, which hands over a ready connection in
``config.attributes["connection"]``. Run standalone (``alembic`` with ``sqlalchemy.url`` set, e.g. via
``storage.migrate.alembic_config(url)``) it builds its own async engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite,
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()
        if is_sqlite:
            # foreign keys are off during migrations (batch mode copies tables); refuse to commit a schema
            # change that left dangling references behind
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RuntimeError(f"migration left foreign key violations: {problems[:10]}")


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=bool(url and url.startswith("sqlite")),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_online_own_engine() -> None:
    from storage.migrate import run_with_connection

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url (storage.migrate.alembic_config(url)) ")
    await run_with_connection(url, _run)


if context.is_offline_mode():
    run_offline()
elif config.attributes.get("connection") is not None:
    _run(config.attributes["connection"])
else:
    asyncio.run(run_online_own_engine())
