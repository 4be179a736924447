"""Garbage collection and retention of the image store (a folder or a bucket).

Uploads are stored only once a request was accepted, but a request can still fail between storing
and queueing (a race on credits, a crash), and deleted jobs leave their results behind.  A blob is
removed when no ``images`` row names its key and no job's parameters do (``init_image``, ``mask``,
``train_images``), and it is older than ``grace_s`` — so a file stored a moment ago for a request
still being queued is never taken (in a bucket, the age is the S3 server's clock against this machine's: keep
``grace_s`` well above any skew).  Temporary files of interrupted writes go the same way.  Anything else found in
the store is left alone.

Retention (``keep_since``): only rows made since then count as references — images made since, or
favourited by anyone, and jobs made since or still waiting or running — so older pictures and uploads
go while their history rows and jobs stay (🔄 makes a txt2img job again from its parameters).

Everything here works on any :class:`~storage.image_store.ImageStore` through ``objects()``, ``lookup()`` and
``remove()``: a folder's file work runs off the event loop, a bucket's requests are async.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.image_store import ImageStore
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
    db: Database, store: ImageStore, grace_s: float = 3600.0, keep_since: datetime | None = None
) -> Files:
    """Remove unreferenced blobs (and temporary files) older than ``grace_s``; what was removed.  With
    ``keep_since``, pictures only rows older than that refer to go too (retention)."""
    cutoff = time.time() - grace_s
    keep = await referenced_keys(db, keep_since)
    files = size = 0
    async for found in store.objects():
        garbage = found.key not in keep if found.key else found.leftover
        if garbage and found.modified <= cutoff and await store.remove(found):
            files, size = files + 1, size + found.size
    collected = Files(files, size)
    if collected.files:
        log.info("image store: removed %d files (%.1f MB)", collected.files, collected.bytes / 2**20)
    return collected


async def discard(db: Database, store: ImageStore, keys: Iterable[str]) -> Files:
    """Remove the files of ``keys`` that no row refers to any more, at once (a forgotten member's pictures)."""
    unreferenced = set(keys) - await referenced_keys(db)
    files = size = 0
    for found in await store.lookup(sorted(unreferenced)):
        if await store.remove(found):
            files, size = files + 1, size + found.size
    return Files(files, size)


async def usage(store: ImageStore, keys: Iterable[str] | None = None) -> Files:
    """Disk use of the image store (everything in it), or of the stored files among ``keys``."""
    if keys is not None:
        found = await store.lookup(keys)
        return Files(len(found), sum(f.size for f in found))
    files = size = 0
    async for f in store.objects():
        files, size = files + 1, size + f.size
    return Files(files, size)
