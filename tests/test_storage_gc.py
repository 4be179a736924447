"""The image store's garbage collection: only blobs nothing refers to, and only old ones, are removed."""

from __future__ import annotations

import dataclasses
import datetime
import os
import time

import pytest

from storage import ImageStore, gc
from tests.test_storage_support import BACKENDS, environment, spec


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


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retention_removes_old_pictures_but_keeps_recent_favourite_and_active_ones(backend, tmp_path):
    async with environment(backend, tmp_path) as env:
        store = ImageStore(tmp_path / "images", fsync=False)
        old_result, favourite, old_upload, queued_upload, new_result = [await store.put(bytes([i]) * 100) for i in range(5)]
        done, _ = await env.queue.enqueue(dataclasses.replace(spec(), interaction_id="1", params={"init_image": old_upload}))
        await env.queue.cancel(done.id, None)
        for key in (old_result, favourite):
            await env.queue.images.record(job_id=done.id, guild_id=100, user_id=1, key=key, width=8, height=8, seed=1, params={})
        starred = (await env.queue.images.for_job(done.id))[1]
        await env.queue.images.add_favourite(2, starred.id)
        queued, _ = await env.queue.enqueue(dataclasses.replace(spec(), interaction_id="2", params={"init_image": queued_upload}))
        env.clock.advance(31 * 86400)
        await env.queue.images.record(job_id=None, guild_id=100, user_id=1, key=new_result, width=8, height=8, seed=1, params={})
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
