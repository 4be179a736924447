"""The image store's garbage collection: only blobs nothing refers to, and only old ones, are removed."""

from __future__ import annotations

import dataclasses
import os
import time

from storage import ImageStore, gc
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
