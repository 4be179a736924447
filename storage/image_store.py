"""Content-addressed image files, on one machine's disk or in an S3-compatible bucket that several machines share.

``ImageStore`` is the interface; ``open_image_store(location)`` builds the store a location names: a folder
(:class:`LocalImageStore`; ``ImageStore(root_dir)`` builds one too) or ``s3://bucket/prefix``
(:class:`S3ImageStore`).

Keys are ``<first two hex digits>/<sha256 hex>.<ext>``: the same bytes always get the same key and are stored
once. On disk, files are written to a temporary file in the destination folder, fsynced, and moved into place
with ``os.replace``, so a reader never sees a partial file and a crash leaves at most a ``.tmp-*`` file behind.
In a bucket an object appears whole or not at all (S3's PUT is atomic); storing the same bytes again rewrites
the object, which renews its age for the garbage collection (``storage.gc``).
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
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

import obstore
from obstore.store import S3Store

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


@dataclass(frozen=True)
class StoredObject:
    """Something a store holds: a blob under its key, or whatever else was found there."""

    name: str  # relative to the store
    size: int
    modified: float  # Unix time of the last write

    @property
    def key(self) -> str | None:
        """The image key, or None for anything that is not a blob of the store."""
        try:
            check_key(self.name)
        except ValueError:
            return None
        return self.name

    @property
    def leftover(self) -> bool:
        """The temporary file of an interrupted write (only a local store has them)."""
        return self.name.rsplit("/", 1)[-1].startswith(".tmp-")


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

    async def delete(self, key: str) -> bool:
        """Remove the object; False if it was not there."""
        check_key(key)
        return await self._remove(key)

    async def remove(self, found: StoredObject) -> bool:
        """Remove something :meth:`objects` listed (a blob or a leftover); False if it was gone already."""
        return await self._remove(found.name)

    @abc.abstractmethod
    def objects(self) -> AsyncIterator[StoredObject]:
        """Everything the store holds, blobs and anything else, in no particular order."""

    @abc.abstractmethod
    async def lookup(self, keys: Iterable[str]) -> list[StoredObject]:
        """The blobs among ``keys`` that the store holds (each once); ``ValueError`` for a malformed key."""

    @abc.abstractmethod
    async def _remove(self, name: str) -> bool: ...


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

    async def _remove(self, name: str) -> bool:
        path = self.root / name

        def remove() -> bool:
            try:
                path.unlink()
                return True
            except FileNotFoundError:
                return False

        return await asyncio.to_thread(remove)

    async def objects(self) -> AsyncIterator[StoredObject]:
        def scan() -> list[StoredObject]:
            found = []
            for path in self.root.glob("*/*"):
                with contextlib.suppress(FileNotFoundError):  # removed while we looked
                    stat = path.stat()
                    if S_ISREG(stat.st_mode):
                        found.append(StoredObject(f"{path.parent.name}/{path.name}", stat.st_size, stat.st_mtime))
            return found

        for found in await asyncio.to_thread(scan):
            yield found

    async def lookup(self, keys: Iterable[str]) -> list[StoredObject]:
        paths = {key: self.path(key) for key in keys}

        def scan() -> list[StoredObject]:
            found = []
            for key, path in paths.items():
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    if S_ISREG(stat.st_mode):
                        found.append(StoredObject(key, stat.st_size, stat.st_mtime))
            return found

        return await asyncio.to_thread(scan)

    def __repr__(self) -> str:
        return f"LocalImageStore({str(self.root)!r})"


class S3ImageStore(ImageStore):
    """The blobs in an S3-compatible bucket under ``s3://bucket/prefix``, through obstore's async client (the
    requests run on its own threads: the event loop never waits on the network).

    ``endpoint`` (e.g. ``http://minio:9000``; an ``http://`` one is allowed plain HTTP), ``region`` and the
    credentials: where empty, the usual AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ALLOW_HTTP``) decide.
    Requests are path-style (``endpoint/bucket/key``), which MinIO and other S3-compatible servers expect.
    """

    CONCURRENT_REQUESTS = 32

    def __init__(
        self, url: str, *, endpoint: str = "", region: str = "", access_key_id: str = "", secret_access_key: str = ""
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        given = {"endpoint": endpoint, "region": region, "access_key_id": access_key_id, "secret_access_key": secret_access_key}
        self._s3 = S3Store(
            self.bucket,
            prefix=self.prefix or None,
            client_options={"allow_http": True} if endpoint.startswith("http://") else None,
            **{name: value for name, value in given.items() if value},
        )

    async def put(self, data: bytes) -> str:
        key = key_for(data)
        await obstore.put_async(self._s3, key, data)
        return key

    async def get(self, key: str) -> bytes:
        check_key(key)
        result = await obstore.get_async(self._s3, key)  # FileNotFoundError when absent
        return bytes(await result.bytes_async())

    async def exists(self, key: str) -> bool:
        check_key(key)
        try:
            await obstore.head_async(self._s3, key)
        except FileNotFoundError:
            return False
        return True

    async def _remove(self, name: str) -> bool:
        # S3's DELETE answers the same whether the object was there or not: ask first
        try:
            await obstore.head_async(self._s3, name)
        except FileNotFoundError:
            return False
        await obstore.delete_async(self._s3, name)
        return True

    async def objects(self) -> AsyncIterator[StoredObject]:
        async for page in obstore.list(self._s3, chunk_size=1000):
            for meta in page:
                yield StoredObject(meta["path"], meta["size"], meta["last_modified"].timestamp())

    async def lookup(self, keys: Iterable[str]) -> list[StoredObject]:
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            check_key(key)

        async def head(key: str) -> StoredObject | None:
            try:
                meta = await obstore.head_async(self._s3, key)
            except FileNotFoundError:
                return None
            return StoredObject(key, meta["size"], meta["last_modified"].timestamp())

        found: list[StoredObject | None] = []
        for start in range(0, len(wanted), self.CONCURRENT_REQUESTS):  # HEADs in parallel, a few at a time
            found += await asyncio.gather(*map(head, wanted[start : start + self.CONCURRENT_REQUESTS]))
        return [f for f in found if f is not None]

    def __repr__(self) -> str:
        return f"S3ImageStore('s3://{self.bucket}/{self.prefix}')"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``; ``ValueError`` for anything else."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?", url)
    if match is None:
        raise ValueError(f"not an S3 location (s3://bucket/prefix): {url!r}")
    return match.group(1), (match.group(2) or "").strip("/")


def open_image_store(location: str | os.PathLike[str], **s3: str) -> ImageStore:
    """The store ``location`` names: ``s3://bucket/prefix`` (``s3``: :class:`S3ImageStore`'s connection
    settings), else a folder."""
    if str(location).startswith("s3://"):
        return S3ImageStore(str(location), **s3)
    return LocalImageStore(location)
