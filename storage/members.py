"""Forgetting a member of a guild, in one transaction.

Their images (history rows) go, with every favourite of them; their own favourites in the guild go;
their finished jobs keep what the books need (kind, cost, status, times: the ledger refers to them and
stays as it is) but lose what they asked for and got (parameters, result, error), so no prompt and no
picture key of theirs remains; their hypernetwork modules go, except shared and approved ones, which
stay for the server credited to :data:`FORMER_MEMBER`.  Jobs still waiting or running are left alone:
cancel (and refund) them first.  The caller removes the files (`Forgotten.keys` through
`storage.gc.discard`, module files at `Forgotten.module_paths`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.gc import keys_in_params
from storage.models import FINAL_STATUSES, Favourite, HypernetworkModule, Image, Job, ModuleStatus

FORMER_MEMBER = 0  # owner_id of a shared module whose owner asked to be forgotten


@dataclass(frozen=True)
class Forgotten:
    images: int  # history rows deleted
    jobs: tuple[int, ...]  # jobs whose parameters and results were erased
    favourites: int  # the member's own favourites deleted
    modules: tuple[str, ...]  # names of the modules deleted
    kept_modules: tuple[str, ...]  # shared, approved modules now credited to a former member
    keys: frozenset[str]  # image-store keys the deleted rows named (see `storage.gc.discard`)
    module_paths: tuple[str, ...]  # files of deleted modules that no module row names any more


async def forget(db: Database, guild_id: int, user_id: int) -> Forgotten:
    """Erase the member's data in the guild as described in the module docstring."""
    now = db.now()
    theirs = and_(Job.guild_id == guild_id, Job.user_id == user_id, Job.status.in_(FINAL_STATUSES))
    images = and_(Image.guild_id == guild_id, Image.owner_id == user_id)
    modules = and_(HypernetworkModule.guild_id == guild_id, HypernetworkModule.owner_id == user_id)
    kept = HypernetworkModule.shared.is_(True) & (HypernetworkModule.status == ModuleStatus.APPROVED.value)

    def unit(s: Session) -> Forgotten:
        keys = set(s.scalars(select(Image.key).where(images)))
        jobs = s.execute(select(Job.id, Job.params).where(theirs)).all()
        for _, params in jobs:
            keys.update(keys_in_params(params or {}))
        in_guild = select(Image.id).where(Image.guild_id == guild_id)
        favourites = s.execute(delete(Favourite).where(Favourite.user_id == user_id, Favourite.image_id.in_(in_guild))).rowcount
        s.execute(delete(Favourite).where(Favourite.image_id.in_(select(Image.id).where(images))))
        deleted_images = s.execute(delete(Image).where(images)).rowcount
        s.execute(
            update(Job)
            .where(theirs)
            .values(params={}, result=None, error=None, answered_at=func.coalesce(Job.answered_at, now), updated_at=now)
        )
        gone = s.execute(select(HypernetworkModule.name, HypernetworkModule.path).where(modules, ~kept)).all()
        s.execute(delete(HypernetworkModule).where(modules, ~kept))
        still_named = set(s.scalars(select(HypernetworkModule.path).where(HypernetworkModule.path.in_([p for _, p in gone]))))
        kept_names = tuple(s.scalars(select(HypernetworkModule.name).where(modules, kept)))
        s.execute(update(HypernetworkModule).where(modules, kept).values(owner_id=FORMER_MEMBER, updated_at=now))
        return Forgotten(
            images=deleted_images,
            jobs=tuple(job_id for job_id, _ in jobs),
            favourites=favourites,
            modules=tuple(name for name, _ in gone),
            kept_modules=kept_names,
            keys=frozenset(keys),
            module_paths=tuple(sorted({p for _, p in gone if p and p not in still_named})),
        )

    return await db.run_write(unit)
