"""Content-addressed image files.

``ImageStore`` is the interface; ``ImageStore(root_dir)`` builds the local-disk implementation
(:class:`LocalImageStore`). An S3-compatible store can implement the same four methods later.

Keys are ``<first two hex digits>/<sha256 hex>.<ext>``: the same bytes always get the same key and are stored
once. Files are written to a temporary file in the destination folder, fsynced, and moved into place with
``os.replace``, so a reader never sees a partial file and a crash leaves at most a ``.tmp-*`` file behind.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{64})\.(png|jpg|webp|gif|bin)$")


def sniff_extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "bin"


def key_for(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest}.{sniff_extension(data)}"


def check_key(key: str) -> re.Match[str]:
    match = _KEY_RE.match(key)
    if match is None or match.group(1) != match.group(2)[:2]:
        raise ValueError(f"not an image store key: {key!r}")
    return match


class ImageStore(abc.ABC):
    """Interface. ``ImageStore(root_dir)`` returns a :class:`LocalImageStore`."""

    def __new__(cls, *args: Any, **kwargs: Any) -> ImageStore:
        if cls is ImageStore:
            cls = LocalImageStore
        return super().__new__(cls)

    @abc.abstractmethod
    async def put(self, data: bytes) -> str:
        """Store ``data``; returns its key (idempotent: the same bytes give the same key)."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The stored bytes; ``FileNotFoundError`` if absent, ``ValueError`` for a malformed key."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the object; False if it was not there."""


class LocalImageStore(ImageStore):
    def __init__(self, root_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root_dir)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Local file of ``key`` (for handing a file to discord.py without reading it)."""
        check_key(key)
        return self.root / key

    async def put(self, data: bytes) -> str:
        key = key_for(data)
        await asyncio.to_thread(self._write, key, data)
        return key

    def _write(self, key: str, data: bytes) -> None:
        final = self.root / key
        if final.exists() and final.stat().st_size == len(data):  # content-addressed: already stored
            with contextlib.suppress(FileNotFoundError):  # (unless it was collected a moment ago: write it again)
                os.utime(final)  # stored again: the garbage collection's grace period starts again
                return
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.fsync:
            self._fsync_dir(final.parent)

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:  # e.g. Windows cannot open folders
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: str) -> bool:
        path = self.path(key)

        def remove() -> bool:
            try:
                path.unlink()
                return True
            except FileNotFoundError:
                return False

        return await asyncio.to_thread(remove)

    def __repr__(self) -> str:
        return f"LocalImageStore({str(self.root)!r})"
