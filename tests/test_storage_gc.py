"""The image store's garbage collection: only blobs nothing refers to, and only old ones, are removed."""

from __future__ import annotations

import dataclasses
import os
import time

from storage import ImageStore, gc, open_image_store
from tests.test_storage_support import environment, spec


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
        assert collected == gc.Collected(files=2, bytes=110)
        assert [await store.exists(k) for k in (result, upload, training, orphan, fresh)] == [True, True, True, False, True]
        assert not stale.exists()


async def test_a_bucket_is_collected_by_the_same_rules(tmp_path, s3_server, s3_images):
    store = open_image_store(
        s3_images["images"], endpoint=s3_images["s3_endpoint"], region=s3_images["s3_region"],
        access_key_id=s3_images["s3_access_key_id"], secret_access_key=s3_images["s3_secret_access_key"],
    )  # fmt: skip
    bucket, prefix = store.bucket, store.prefix
    s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/README", Body=b"someone else's")
    async with environment("sqlite", tmp_path) as env:
        result, upload, orphan = [await store.put(bytes([i]) * 100) for i in range(3)]
        job, _ = await env.queue.enqueue(dataclasses.replace(spec(), params={"prompt": "a cat", "init_image": upload}))
        await env.queue.images.record(job_id=job.id, guild_id=100, user_id=1, key=result, width=8, height=8, seed=1, params={})
        # a bucket's objects cannot be aged by hand: a fresh orphan stays within the grace time, goes without one
        assert await gc.collect(env.db, store, grace_s=3600) == gc.Collected(files=0, bytes=0)
        assert await gc.collect(env.db, store, grace_s=0) == gc.Collected(files=1, bytes=100)
    assert s3_server.keys(bucket) == sorted([f"{prefix}/README", f"{prefix}/{result}", f"{prefix}/{upload}"])
    assert not await store.exists(orphan)
