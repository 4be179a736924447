"""Content-addressed image files (in a folder and in an S3 bucket: the same contract), image records, history and
favourites."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from storage import ImageStore, LocalImageStore, S3ImageStore, images, open_image_store
from storage.image_store import key_for, sniff_extension
from tests.test_storage_support import BACKENDS, environment, spec

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PNG2 = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64


def leftovers(root) -> list[str]:
    return [p.name for p in root.rglob(".tmp-*")]


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path) -> ImageStore:
    """Each kind of store, as the bot's configuration opens it."""
    if request.param == "folder":
        return open_image_store(tmp_path / "images")
    s3 = request.getfixturevalue("s3_images")
    return open_image_store(
        s3["images"], endpoint=s3["s3_endpoint"], region=s3["s3_region"], access_key_id=s3["s3_access_key_id"],
        secret_access_key=s3["s3_secret_access_key"],
    )  # fmt: skip


async def listed(store: ImageStore) -> dict[str, int]:
    return {found.name: found.size async for found in store.objects()}


async def test_put_is_content_addressed_and_readable(store):
    key = await store.put(PNG)
    digest = hashlib.sha256(PNG).hexdigest()
    assert key == f"{digest[:2]}/{digest}.png"
    assert await store.get(key) == PNG
    assert await store.put(PNG) == key  # same bytes, same key, stored once
    assert await listed(store) == {key: len(PNG)}
    key2 = await store.put(PNG2)
    assert key2 != key and await store.get(key2) == PNG2
    assert await listed(store) == {key: len(PNG), key2: len(PNG2)}
    assert await store.exists(key) and await store.delete(key) and not await store.exists(key)
    assert not await store.delete(key)
    with pytest.raises(FileNotFoundError):
        await store.get(key)
    assert await listed(store) == {key2: len(PNG2)}


async def test_concurrent_puts_of_the_same_bytes(store):
    keys = await asyncio.gather(*(store.put(PNG) for _ in range(16)))
    assert len(set(keys)) == 1 and await store.get(keys[0]) == PNG
    assert await listed(store) == {keys[0]: len(PNG)}


async def test_keys_are_validated(store):
    for bad in ["../etc/passwd", "ab/" + "0" * 64 + ".png", "zz", "/abs/path.png", key_for(PNG) + "/.."]:
        for call in (store.get, store.exists, store.delete):
            with pytest.raises(ValueError):
                await call(bad)


async def test_a_folder_store_writes_whole_files(tmp_path):
    store = ImageStore(tmp_path / "images")
    assert isinstance(store, LocalImageStore)
    key = await store.put(PNG)
    assert store.path(key).read_bytes() == PNG
    assert [p.relative_to(store.root).as_posix() for p in store.root.rglob("*.png")] == [key]
    assert leftovers(tmp_path) == []


async def test_an_s3_store_keeps_its_blobs_under_its_prefix_in_the_bucket(s3_server, s3_images):
    settings = {"endpoint": s3_images["s3_endpoint"], "region": s3_images["s3_region"]}
    credentials = {"access_key_id": s3_images["s3_access_key_id"], "secret_access_key": s3_images["s3_secret_access_key"]}
    store = open_image_store(s3_images["images"], **settings, **credentials)
    assert isinstance(store, S3ImageStore) and store.prefix == "bot/images"
    key = await store.put(PNG)
    # another S3 client sees the object where the URL says, byte for byte
    client = s3_server.client()
    assert s3_server.keys(store.bucket) == [f"bot/images/{key}"]
    assert client.get_object(Bucket=store.bucket, Key=f"bot/images/{key}")["Body"].read() == PNG
    # a store on another prefix of the same bucket neither sees nor removes it
    other = open_image_store(f"s3://{store.bucket}/other", **settings, **credentials)
    assert await listed(other) == {} and not await other.exists(key) and not await other.delete(key)
    assert await store.get(key) == PNG


async def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)

    def crash(src, dst):
        raise OSError("disk full at the worst moment")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        await store.put(PNG)
    monkeypatch.undo()
    # nothing half-written under the final name, and the temp file is gone
    assert not await store.exists(key_for(PNG))
    assert leftovers(tmp_path) == []
    assert await store.get(await store.put(PNG)) == PNG


def test_extension_sniffing():
    assert sniff_extension(PNG) == "png"
    assert sniff_extension(b"\xff\xd8\xff\xe0rest") == "jpg"
    assert sniff_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_extension(b"GIF89a...") == "gif"
    assert sniff_extension(b"hello") == "bin"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_records_history_and_favourites(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        store = ImageStore(tmp_path / "images")
        job, _ = await env.queue.enqueue(spec(1, guild_id=10))
        key_a, key_b = await store.put(PNG), await store.put(PNG2)
        first = await images.record(env.db, job.id, 1, 10, key_a, 512, 768, 1234567890123, {"prompt": "cat"})
        second = await env.queue.images.record(
            job_id=job.id,
            guild_id=10,
            user_id=1,
            key=key_b,
            width=512,
            height=768,
            seed=7,
            params={},
            batch_index=1,
        )
        await images.record(env.db, None, 1, 11, key_a, 64, 64, 1, {})  # another guild
        await images.record(env.db, None, 2, 10, key_a, 64, 64, 1, {})  # another user
        assert first.id and first.seed == 1234567890123 and first.created_at == env.clock.now
        assert [i.id for i in await images.for_job(env.db, job.id)] == [first.id, second.id]
        assert [i.id for i in await images.history(env.db, 10, 1)] == [second.id, first.id]
        assert [i.id for i in await images.history(env.db, 10, 1, limit=1, offset=1)] == [first.id]
        assert (await images.get(env.db, first.id)).params == {"prompt": "cat"}

        assert await images.add_favourite(env.db, 3, first.id)
        assert not await images.add_favourite(env.db, 3, first.id)
        assert await env.queue.images.favourite(10, 3, key_b)  # by key, as a reaction knows it
        assert not await env.queue.images.favourite(10, 3, "ff/" + "f" * 64 + ".png")
        assert [i.id for i in await images.list_favourites(env.db, 3)] == [second.id, first.id]
        assert [i.id for i in await images.list_favourites(env.db, 3, guild_id=11)] == []
        assert await images.remove_favourite(env.db, 3, second.id)
        assert not await images.remove_favourite(env.db, 3, second.id)
        assert [i.id for i in await env.queue.images.favourites(3)] == [first.id]
        with pytest.raises(LookupError):
            await images.add_favourite(env.db, 3, 999_999)
        await env.queue.cancel(job.id, actor_id=None)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_relationships_never_lazy_load(backend, tmp_path):
    from sqlalchemy.exc import InvalidRequestError

    async with environment(backend, tmp_path) as env:
        job, _ = await env.queue.enqueue(spec(1))
        image = await images.record(env.db, job.id, 1, 100, key_for(PNG), 8, 8, 1, {})
        for obj, attr in ((await env.queue.get(job.id), "images"), (image, "job")):
            with pytest.raises(InvalidRequestError):
                getattr(obj, attr)
        await env.queue.cancel(job.id, actor_id=None)
