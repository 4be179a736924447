"""Image records, history and favourites (the files themselves live in an :class:`~storage.ImageStore`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from storage import _sql
from storage.db import Database
from storage.models import Favourite, Image

favourites: Table = Favourite.__table__  # type: ignore[assignment]


async def record(
    db: Database,
    job_id: int | None,
    owner_id: int,
    guild_id: int,
    key: str,
    width: int,
    height: int,
    seed: int,
    params: dict[str, Any],
    batch_index: int = 0,
) -> Image:
    """Record one stored image of a job."""
    image = Image(
        job_id=job_id,
        owner_id=owner_id,
        guild_id=guild_id,
        key=key,
        width=width,
        height=height,
        seed=seed,
        batch_index=batch_index,
        params=dict(params),
        created_at=db.now(),
    )

    def unit(s: Session) -> Image:
        s.add(image)
        s.flush()
        return image

    return await db.run_write(unit)


async def get(db: Database, image_id: int) -> Image | None:
    return await db.run_read(lambda s: s.get(Image, image_id))


async def for_job(db: Database, job_id: int) -> list[Image]:
    stmt = select(Image).where(Image.job_id == job_id).order_by(Image.batch_index, Image.id)
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def history(db: Database, guild_id: int, user_id: int, limit: int = 20, offset: int = 0) -> list[Image]:
    """The user's images in the guild, newest first."""
    stmt = (
        select(Image)
        .where(Image.guild_id == guild_id, Image.owner_id == user_id)
        .order_by(Image.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def guild_keys(db: Database, guild_id: int) -> list[str]:
    """The store keys of the guild's images (each once)."""
    stmt = select(Image.key).where(Image.guild_id == guild_id).distinct()
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def add_favourite(db: Database, user_id: int, image_id: int) -> bool:
    """True if newly added, False if it already was a favourite. ``LookupError`` for an unknown image."""
    now = db.now()

    def unit(s: Session) -> bool:
        if s.scalar(select(Image.id).where(Image.id == image_id)) is None:
            raise LookupError(f"image {image_id} does not exist")
        added = s.scalar(
            _sql.upsert(s, favourites)
            .values(user_id=user_id, image_id=image_id, created_at=now)
            .on_conflict_do_nothing(index_elements=[favourites.c.user_id, favourites.c.image_id])
            .returning(favourites.c.image_id)
        )
        return added is not None

    return await db.run_write(unit)


async def remove_favourite(db: Database, user_id: int, image_id: int) -> bool:
    stmt = delete(Favourite).where(Favourite.user_id == user_id, Favourite.image_id == image_id)
    return await db.run_write(lambda s: bool(s.execute(stmt).rowcount))


async def list_favourites(
    db: Database, user_id: int, guild_id: int | None = None, limit: int = 20, offset: int = 0
) -> list[Image]:
    """The user's favourite images, most recently favourited first."""
    stmt = select(Image).join(Favourite, Favourite.image_id == Image.id).where(Favourite.user_id == user_id)
    if guild_id is not None:
        stmt = stmt.where(Image.guild_id == guild_id)
    stmt = stmt.order_by(Favourite.created_at.desc(), Image.id.desc()).limit(limit).offset(offset)
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def favourite_key(db: Database, guild_id: int, user_id: int, key: str) -> bool:
    """Favourite the newest image of the guild stored under ``key`` (what a reaction on a posted result
    knows). True if newly added; False if already a favourite or no such image."""
    stmt = (
        select(Image.id)
        .where(Image.guild_id == guild_id, Image.key == key)
        .order_by(Image.id.desc())
        .limit(1)
    )
    image_id = await db.run_read(lambda s: s.scalar(stmt))
    if image_id is None:
        return False
    return await add_favourite(db, user_id, image_id)


class ImageRepo:
    """The functions of this module bound to one database, for code that passes a repository around."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        *,
        job_id: int | None,
        guild_id: int,
        user_id: int,
        key: str,
        width: int,
        height: int,
        seed: int,
        params: dict[str, Any],
        batch_index: int = 0,
    ) -> Image:
        return await record(self.db, job_id, user_id, guild_id, key, width, height, seed, params, batch_index)

    async def get(self, image_id: int) -> Image | None:
        return await get(self.db, image_id)

    async def for_job(self, job_id: int) -> list[Image]:
        return await for_job(self.db, job_id)

    async def history(self, guild_id: int, user_id: int, limit: int = 20, offset: int = 0) -> list[Image]:
        return await history(self.db, guild_id, user_id, limit, offset)

    async def add_favourite(self, user_id: int, image_id: int) -> bool:
        return await add_favourite(self.db, user_id, image_id)

    async def favourite(self, guild_id: int, user_id: int, key: str) -> bool:
        return await favourite_key(self.db, guild_id, user_id, key)

    async def remove_favourite(self, user_id: int, image_id: int) -> bool:
        return await remove_favourite(self.db, user_id, image_id)

    async def favourites(
        self, user_id: int, guild_id: int | None = None, limit: int = 20, offset: int = 0
    ) -> list[Image]:
        return await list_favourites(self.db, user_id, guild_id, limit, offset)
