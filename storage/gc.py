"""Garbage collection of the image store (a folder or a bucket): blobs that no image row and no job refers to.

Uploads are stored only once a request was accepted, but a request can still fail between storing
and queueing (a race on credits, a crash), and deleted jobs leave their results behind.  A blob is
removed when no ``images`` row names its key and no job's parameters do (``init_image``, ``mask``,
``train_images``), and it is older than ``grace_s`` — so a file stored a moment ago for a request
still being queued is never taken (in a bucket, the age is the S3 server's clock against this machine's: keep
``grace_s`` well above any skew).  Temporary files of interrupted writes go the same way.  Anything else found in
the store is left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.image_store import ImageStore
from storage.models import Image, Job

log = logging.getLogger(__name__)

_KEY_PARAMS = ("init_image", "mask", "train_images")


@dataclass(frozen=True)
class Collected:
    files: int
    bytes: int


def keys_in_params(params: dict[str, Any]) -> Iterable[str]:
    """The store keys a job's parameters name."""
    for name in _KEY_PARAMS:
        value = params.get(name)
        for key in value if isinstance(value, list) else [value]:
            if isinstance(key, str):
                yield key


async def referenced_keys(db: Database) -> set[str]:
    def read(s: Session) -> set[str]:
        keys = set(s.scalars(select(Image.key)))
        for params in s.scalars(select(Job.params)):
            keys.update(keys_in_params(params or {}))
        return keys

    return await db.run_read(read)


async def collect(db: Database, store: ImageStore, grace_s: float = 3600.0) -> Collected:
    """Remove unreferenced blobs (and temporary files) older than ``grace_s``; what was removed."""
    cutoff = time.time() - grace_s
    keep = await referenced_keys(db)
    files = size = 0
    async for found in store.objects():
        garbage = found.key not in keep if found.key else found.leftover
        if garbage and found.modified <= cutoff and await store.remove(found):
            files, size = files + 1, size + found.size
    collected = Collected(files, size)
    if collected.files:
        log.info("image store: removed %d unreferenced files (%.1f MB)", collected.files, collected.bytes / 2**20)
    return collected
