"""Module files (hypernetworks, LoRAs, embeddings): uploaded per guild by an owner, optionally shared after
approval.  Every look-up is within one kind (``ModuleKind``); names are unique per guild and kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage import _sql
from storage.db import Database
from storage.models import Module, ModuleKind, ModuleStatus


async def register(
    db: Database,
    kind: ModuleKind | str,
    guild_id: int,
    owner_id: int,
    name: str,
    path: str,
    sha256: str,
    metadata: dict[str, Any] | None = None,
    *,
    shared: bool = False,
    status: ModuleStatus | str = ModuleStatus.PRIVATE,
) -> Module:
    """Record a module. Names are unique per guild and kind (``IntegrityError`` on a duplicate)."""
    now = db.now()
    module = Module(
        guild_id=guild_id,
        kind=ModuleKind(kind).value,
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

    def unit(s: Session) -> Module:
        _sql.ensure_guild(s, guild_id, now)
        s.add(module)
        s.flush()
        return module

    return await db.run_write(unit)


async def get(db: Database, kind: ModuleKind | str, guild_id: int, name: str) -> Module | None:
    stmt = select(Module).where(Module.guild_id == guild_id, Module.kind == ModuleKind(kind).value, Module.name == name)
    return await db.run_read(lambda s: s.scalar(stmt))


async def get_by_id(db: Database, module_id: int) -> Module | None:
    return await db.run_read(lambda s: s.get(Module, module_id))


async def visible(db: Database, kind: ModuleKind | str, guild_id: int, user_id: int) -> list[Module]:
    """Modules of ``kind`` a member may use: their own plus the guild's shared and approved ones."""
    stmt = (
        select(Module)
        .where(
            Module.guild_id == guild_id,
            Module.kind == ModuleKind(kind).value,
            or_(
                Module.owner_id == user_id,
                Module.shared.is_(True)
                & (Module.status == ModuleStatus.APPROVED.value),
            ),
        )
        .order_by(Module.name)
    )
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def list_all(
    db: Database, guild_id: int, status: ModuleStatus | str | None = None, kind: ModuleKind | str | None = None
) -> list[Module]:
    """All modules of a guild (for moderators), optionally only those with ``status`` or of ``kind``."""
    stmt = select(Module).where(Module.guild_id == guild_id)
    if kind is not None:
        stmt = stmt.where(Module.kind == ModuleKind(kind).value)
    if status is not None:
        stmt = stmt.where(Module.status == ModuleStatus(status).value)
    stmt = stmt.order_by(Module.kind, Module.name)
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def update(
    db: Database,
    module_id: int,
    *,
    shared: bool | None = None,
    status: ModuleStatus | str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Module | None:
    """Change sharing / review status / metadata (merged); None if the module does not exist."""
    now = db.now()
    new_status = ModuleStatus(status).value if status is not None else None

    def unit(s: Session) -> Module | None:
        module = s.get(Module, module_id, with_for_update=True)
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
        module = s.get(Module, module_id)
        if module is None:
            return False
        s.delete(module)
        return True

    return await db.run_write(unit)


async def path_in_use(db: Database, path: str) -> bool:
    """Whether any module row still names the file ``path`` (identical uploads share one file)."""
    stmt = select(Module.id).where(Module.path == path).limit(1)
    return await db.run_read(lambda s: s.scalar(stmt)) is not None
