"""The image store's garbage collection: only blobs nothing refers to, and only old ones, are removed."""

from __future__ import annotations

import dataclasses
import datetime
import os
import time

import pytest

from storage import ImageStore, gc, open_image_store
from tests.test_storage_support import BACKENDS, environment, spec


def bucket_store(s3_images: dict[str, str]) -> ImageStore:
    return open_image_store(
        s3_images["images"], endpoint=s3_images["s3_endpoint"], region=s3_images["s3_region"],
        access_key_id=s3_images["s3_access_key_id"], secret_access_key=s3_images["s3_secret_access_key"],
    )  # fmt: skip


async def test_unreferenced_old_blobs_go_and_everything_else_stays(tmp_path):
    async with environment("sqlite", tmp_path) as env:
        store = ImageStore(tmp_path / "images", fsync=False)
        result, upload, training, orphan, fresh = [await store.put(bytes([i]) * 100) for i in range(5)]
        job, _ = await env.queue.enqueue(
            dataclasses.replace(spec(), params={"prompt": "a cat", "init_image": upload, "train_images": [training]})
        )
        await env.queue.images.record(job_id=job.id, guild_id=100, user_id=1, key=result, width=8, height=8, seed=1, params={})
        stale = store.root / result[:2] / ".tmp-interrupted"
        stale.write_bytes(b"x" * 10)
        old = time.time() - 7200
        for key in (result, upload, training, orphan):
            os.utime(store.path(key), (old, old))
        os.utime(stale, (old, old))
        collected = await gc.collect(env.db, store, grace_s=3600)
        assert collected == gc.Files(files=2, bytes=110)
        assert [await store.exists(k) for k in (result, upload, training, orphan, fresh)] == [True, True, True, False, True]
        assert not stale.exists()


async def test_a_bucket_is_collected_by_the_same_rules(tmp_path, s3_server, s3_images):
    store = bucket_store(s3_images)
    bucket, prefix = store.bucket, store.prefix
    s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/README", Body=b"someone else's")
    async with environment("sqlite", tmp_path) as env:
        result, upload, orphan = [await store.put(bytes([i]) * 100) for i in range(3)]
        job, _ = await env.queue.enqueue(dataclasses.replace(spec(), params={"prompt": "a cat", "init_image": upload}))
        await env.queue.images.record(job_id=job.id, guild_id=100, user_id=1, key=result, width=8, height=8, seed=1, params={})
        # a bucket's objects cannot be aged by hand: a fresh orphan stays within the grace time, goes without one
        assert await gc.collect(env.db, store, grace_s=3600) == gc.Files(files=0, bytes=0)
        assert await gc.collect(env.db, store, grace_s=0) == gc.Files(files=1, bytes=100)
    assert s3_server.keys(bucket) == sorted([f"{prefix}/README", f"{prefix}/{result}", f"{prefix}/{upload}"])
    assert not await store.exists(orphan)


async def _retention_scene(env, store) -> list[str]:
    """Five 100-byte pictures a month apart in the books: a cancelled job's result and its upload, a result a member
    starred, a queued job's upload, and a result recorded now. Their keys in that order."""
    old_result, favourite, old_upload, queued_upload, new_result = [await store.put(bytes([i]) * 100) for i in range(5)]
    done, _ = await env.queue.enqueue(dataclasses.replace(spec(), interaction_id="1", params={"init_image": old_upload}))
    await env.queue.cancel(done.id, None)
    for key in (old_result, favourite):
        await env.queue.images.record(job_id=done.id, guild_id=100, user_id=1, key=key, width=8, height=8, seed=1, params={})
    starred = (await env.queue.images.for_job(done.id))[1]
    await env.queue.images.add_favourite(2, starred.id)
    await env.queue.enqueue(dataclasses.replace(spec(), interaction_id="2", params={"init_image": queued_upload}))
    env.clock.advance(31 * 86400)
    await env.queue.images.record(job_id=None, guild_id=100, user_id=1, key=new_result, width=8, height=8, seed=1, params={})
    return [old_result, favourite, old_upload, queued_upload, new_result]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retention_removes_old_pictures_but_keeps_recent_favourite_and_active_ones(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        store = ImageStore(tmp_path / "images", fsync=False)
        old_result, favourite, old_upload, queued_upload, new_result = await _retention_scene(env, store)
        old = time.time() - 7200
        for key in (old_result, favourite, old_upload, queued_upload, new_result):
            os.utime(store.path(key), (old, old))
        assert await gc.usage(store) == gc.Files(files=5, bytes=500)
        collected = await gc.collect(env.db, store, keep_since=env.clock.now - datetime.timedelta(days=30))
        assert collected == gc.Files(files=2, bytes=200)
        kept = [await store.exists(k) for k in (old_result, favourite, old_upload, queued_upload, new_result)]
        assert kept == [False, True, False, True, True]
        assert await gc.usage(store, [favourite, old_result, favourite]) == gc.Files(files=1, bytes=100)
        # without retention nothing that any row names goes
        assert await gc.collect(env.db, store) == gc.Files(0, 0)


@pytest.mark.parametrize("kind", ["folder", "s3"])
async def test_retention_discard_and_usage_on_either_store(kind, request, tmp_path):
    store = ImageStore(tmp_path / "images", fsync=False) if kind == "folder" else bucket_store(request.getfixturevalue("s3_images"))
    async with environment("sqlite", tmp_path) as env:
        old_result, favourite, old_upload, queued_upload, new_result = await _retention_scene(env, store)
        orphan = await store.put(bytes([9]) * 50)
        assert await gc.usage(store) == gc.Files(files=6, bytes=550)
        assert await gc.usage(store, [favourite, orphan, favourite]) == gc.Files(files=2, bytes=150)
        # a forgotten member's keys: only the one no row names goes, at once (no grace time)
        assert await gc.discard(env.db, store, [orphan, new_result, old_result]) == gc.Files(files=1, bytes=50)
        assert not await store.exists(orphan) and await store.exists(new_result) and await store.exists(old_result)
        assert await gc.discard(env.db, store, [orphan]) == gc.Files(0, 0)
        # a bucket's objects cannot be aged by hand: no grace time here, the retention alone decides
        collected = await gc.collect(env.db, store, grace_s=0, keep_since=env.clock.now - datetime.timedelta(days=30))
        assert collected == gc.Files(files=2, bytes=200)
        kept = [await store.exists(k) for k in (old_result, favourite, old_upload, queued_upload, new_result)]
        assert kept == [False, True, False, True, True]
        assert await gc.usage(store) == gc.Files(files=3, bytes=300)
        assert await gc.usage(store, [old_result, favourite, new_result]) == gc.Files(files=2, bytes=200)
        assert await gc.collect(env.db, store, grace_s=0) == gc.Files(0, 0)
