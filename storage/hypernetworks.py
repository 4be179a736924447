"""Hypernetwork modules: uploaded per guild by an owner, optionally shared after approval."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage import _sql
from storage.db import Database
from storage.models import HypernetworkModule, ModuleStatus


async def register(
    db: Database,
    guild_id: int,
    owner_id: int,
    name: str,
    path: str,
    sha256: str,
    metadata: dict[str, Any] | None = None,
    *,
    shared: bool = False,
    status: ModuleStatus | str = ModuleStatus.PRIVATE,
) -> HypernetworkModule:
    """Record a module. Names are unique per guild (``IntegrityError`` on a duplicate)."""
    now = db.now()
    module = HypernetworkModule(
        guild_id=guild_id,
        owner_id=owner_id,
        name=name,
        path=path,
        sha256=sha256,
        shared=shared,
        status=ModuleStatus(status).value,
        meta=dict(metadata or {}),
        created_at=now,
        updated_at=now,
    )

    def unit(s: Session) -> HypernetworkModule:
        _sql.ensure_guild(s, guild_id, now)
        s.add(module)
        s.flush()
        return module

    return await db.run_write(unit)


async def get(db: Database, guild_id: int, name: str) -> HypernetworkModule | None:
    stmt = select(HypernetworkModule).where(
        HypernetworkModule.guild_id == guild_id, HypernetworkModule.name == name
    )
    return await db.run_read(lambda s: s.scalar(stmt))


async def get_by_id(db: Database, module_id: int) -> HypernetworkModule | None:
    return await db.run_read(lambda s: s.get(HypernetworkModule, module_id))


async def visible(db: Database, guild_id: int, user_id: int) -> list[HypernetworkModule]:
    """Modules a member may use: their own plus the guild's shared and approved ones."""
    stmt = (
        select(HypernetworkModule)
        .where(
            HypernetworkModule.guild_id == guild_id,
            or_(
                HypernetworkModule.owner_id == user_id,
                HypernetworkModule.shared.is_(True)
                & (HypernetworkModule.status == ModuleStatus.APPROVED.value),
            ),
        )
        .order_by(HypernetworkModule.name)
    )
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def list_all(
    db: Database, guild_id: int, status: ModuleStatus | str | None = None
) -> list[HypernetworkModule]:
    """All modules of a guild (for moderators), optionally only those with ``status``."""
    stmt = select(HypernetworkModule).where(HypernetworkModule.guild_id == guild_id)
    if status is not None:
        stmt = stmt.where(HypernetworkModule.status == ModuleStatus(status).value)
    stmt = stmt.order_by(HypernetworkModule.name)
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def update(
    db: Database,
    module_id: int,
    *,
    shared: bool | None = None,
    status: ModuleStatus | str | None = None,
    metadata: dict[str, Any] | None = None,
) -> HypernetworkModule | None:
    """Change sharing / review status / metadata (merged); None if the module does not exist."""
    now = db.now()
    new_status = ModuleStatus(status).value if status is not None else None

    def unit(s: Session) -> HypernetworkModule | None:
        module = s.get(HypernetworkModule, module_id, with_for_update=True)
        if module is None:
            return None
        if shared is not None:
            module.shared = shared
        if new_status is not None:
            module.status = new_status
        if metadata:
            module.meta = {**(module.meta or {}), **metadata}
        module.updated_at = now
        s.flush()
        return module

    return await db.run_write(unit)


async def delete(db: Database, module_id: int) -> bool:
    def unit(s: Session) -> bool:
        module = s.get(HypernetworkModule, module_id)
        if module is None:
            return False
        s.delete(module)
        return True

    return await db.run_write(unit)
