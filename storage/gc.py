"""Garbage collection and retention of the local image store.

Uploads are stored only once a request was accepted, but a request can still fail between storing
and queueing (a race on credits, a crash), and deleted jobs leave their results behind.  A blob is
removed when no ``images`` row names its key and no job's parameters do (``init_image``, ``mask``,
``train_images``), and it is older than ``grace_s`` — so a file stored a moment ago for a request
still being queued is never taken.  Temporary files of interrupted writes go the same way.

Retention (``keep_since``): only rows made since then count as references — images made since, or
favourited by anyone, and jobs made since or still waiting or running — so older pictures and uploads
go while their history rows and jobs stay (🔄 makes a txt2img job again from its parameters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.image_store import LocalImageStore, check_key
from storage.models import ACTIVE_STATUSES, Favourite, Image, Job

log = logging.getLogger(__name__)

_KEY_PARAMS = ("init_image", "mask", "train_images")


@dataclass(frozen=True)
class Files:
    """A number of files and their size in bytes."""

    files: int
    bytes: int


def keys_in_params(params: dict[str, Any]) -> Iterable[str]:
    """The store keys a job's parameters name."""
    for name in _KEY_PARAMS:
        value = params.get(name)
        for key in value if isinstance(value, list) else [value]:
            if isinstance(key, str):
                yield key


async def referenced_keys(db: Database, since: datetime | None = None) -> set[str]:
    """The keys image rows and jobs name; with ``since``, only those of rows kept by retention (see above)."""

    def read(s: Session) -> set[str]:
        images, params = select(Image.key), select(Job.params)
        if since is not None:
            images = images.where(or_(Image.created_at >= since, Image.id.in_(select(Favourite.image_id))))
            params = params.where(or_(Job.created_at >= since, Job.status.in_(ACTIVE_STATUSES)))
        keys = set(s.scalars(images))
        for job_params in s.scalars(params):
            keys.update(keys_in_params(job_params or {}))
        return keys

    return await db.run_read(read)


async def collect(
    db: Database, store: LocalImageStore, grace_s: float = 3600.0, keep_since: datetime | None = None
) -> Files:
    """Remove unreferenced blobs (and temporary files) older than ``grace_s``; what was removed.  With
    ``keep_since``, pictures only rows older than that refer to go too (retention)."""
    cutoff = time.time() - grace_s
    keep = await referenced_keys(db, keep_since)

    def sweep() -> Files:
        files = size = 0
        for path in store.root.glob("*/*"):
            key = f"{path.parent.name}/{path.name}"
            try:
                check_key(key)
                known = key in keep
            except ValueError:
                known = not path.name.startswith(".tmp-")  # something else someone put there: leave it
            stat = path.stat()
            if known or stat.st_mtime > cutoff:
                continue
            path.unlink(missing_ok=True)
            files, size = files + 1, size + stat.st_size
        return Files(files, size)

    collected = await asyncio.to_thread(sweep)
    if collected.files:
        log.info("image store: removed %d files (%.1f MB)", collected.files, collected.bytes / 2**20)
    return collected


async def discard(db: Database, store: LocalImageStore, keys: Iterable[str]) -> Files:
    """Remove the files of ``keys`` that no row refers to any more, at once (a forgotten member's pictures)."""
    unreferenced = set(keys) - await referenced_keys(db)

    def remove() -> Files:
        files = size = 0
        for path in map(store.path, unreferenced):
            with contextlib.suppress(FileNotFoundError):
                length = path.stat().st_size
                path.unlink()
                files, size = files + 1, size + length
        return Files(files, size)

    return await asyncio.to_thread(remove)


async def usage(store: LocalImageStore, keys: Iterable[str] | None = None) -> Files:
    """Disk use of the image store, or of the stored files among ``keys`` (walked off the event loop)."""

    def walk() -> Files:
        if keys is None:
            paths = [p for p in store.root.glob("*/*") if p.is_file()]
        else:
            paths = [p for p in map(store.path, set(keys)) if p.is_file()]
        return Files(len(paths), sum(p.stat().st_size for p in paths))

    return await asyncio.to_thread(walk)
