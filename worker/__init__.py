"""The GPU worker: claims jobs from the durable queue and runs every torch call on one thread.

The asyncio loop that talks to Discord never waits on the GPU: the engine is loaded and every
generation runs on a single dedicated thread (`gpu` executor); progress crosses back to the loop
with `call_soon_threadsafe`.  The worker owns the job life cycle after enqueue:

claim (lease) → run (batched) → store PNGs → complete (settle credits) → publish → mark posted

and on failure: fail (refund, idempotent) → publish the error.  Jobs whose lease expired (the
process died) are re-queued by the reaper at start and periodically; results that were computed
but not yet announced are published again after a restart (the publisher recognises a message it
already posted by the job id it carries).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from gen_core.types import Cancelled, GeneratedImage, Progress
from worker.jobs import Inputs, JobParams, Task, params_of

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the worker needs from the Discord side (implemented in services.publisher)."""

    async def progress(self, job: Any, progress: Progress) -> None: ...

    async def result(self, job: Any, images: list[dict[str, Any]]) -> int | None: ...

    async def find_posted(self, job: Any) -> int | None: ...

    async def failure(self, job: Any, error: str) -> None: ...


# A job handler runs on the GPU thread: (engine, tasks, progress, cancel, preview_every) -> images per task.
Handler = Callable[..., list[list[GeneratedImage]]]


@dataclass
class WorkerStats:
    seconds_per_cost: float = 0.05  # moving estimate used for ETAs
    history: list[float] = field(default_factory=list)


class Worker:
    def __init__(
        self,
        *,
        queue: Any,
        store: Any,
        images: Any,
        publisher: Publisher,
        engine_loader: Callable[[], Any],
        handlers: dict[str, Handler],
        load_inputs: Callable[[JobParams], Awaitable[Inputs]],
        max_batch: int = 4,
        lease_s: float = 300.0,
        max_attempts: int = 3,
        poll_interval_s: float = 0.5,
        preview_every: int = 5,
        screen: Callable[[JobParams, list[GeneratedImage]], Awaitable[list[GeneratedImage]]] | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.images = images
        self.publisher = publisher
        self.engine_loader = engine_loader
        self.handlers = handlers
        self.load_inputs = load_inputs
        self.max_batch = max_batch
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.preview_every = preview_every
        self.screen = screen  # e.g. an image safety check: may replace images before they are stored
        self.worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        self.gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self.engine: Any = None
        self.stats = WorkerStats()
        self.running_jobs: dict[int, Any] = {}
        self._cancelled: set[int] = set()
        self._publishing: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self.gpu, self.engine_loader)
        await self._reap()
        self._task = asyncio.create_task(self._loop(), name="gpu-worker")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; let the running batch finish (or release it after `timeout`)."""
        self._stopping = True
        self._wake.set()
        if self._task and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._cancelled.update(self.running_jobs)
                await self.queue.release(list(self.running_jobs))
                self._task.cancel()
        self.gpu.shutdown(wait=False, cancel_futures=True)

    async def kill(self) -> None:
        """Stop dead, as if the process were killed: running jobs keep their lease (tests)."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """A job was enqueued: claim now rather than at the next poll."""
        self._wake.set()

    def request_cancel(self, job_id: int) -> None:
        """Stop a running job at its next denoising step (credits are refunded by the queue)."""
        self._cancelled.add(job_id)

    # -- main loop -------------------------------------------------------------------------
    async def _loop(self) -> None:
        last_reap = time.monotonic()
        while not self._stopping:
            try:
                if time.monotonic() - last_reap > self.lease_s / 2:
                    last_reap = time.monotonic()
                    await self._reap()
                jobs = await self.queue.claim(self.worker_id, max_batch=self.max_batch, lease_s=self.lease_s)
            except Exception:  # the database is briefly unavailable: retry, don't die
                log.exception("claiming jobs failed")
                jobs = []
            if not jobs:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
                except TimeoutError:
                    pass
                continue
            try:
                await self._run_batch(jobs)
            except Exception:  # storing or announcing failed: the lease brings the jobs back
                log.exception("finishing batch %s failed", [j.id for j in jobs])

    async def _run_batch(self, jobs: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        ids = [job.id for job in jobs]
        for job in jobs:
            self.running_jobs[job.id] = job
        keep_alive = asyncio.create_task(self._keep_lease(ids))
        started = time.monotonic()
        try:
            tasks = []
            for job in jobs:
                params = params_of(job)
                tasks.append(Task(job.id, params, await self.load_inputs(params)))
            handler = self.handlers[jobs[0].kind]

            def progress(p: Progress) -> None:
                loop.call_soon_threadsafe(self._on_progress, jobs, p)

            def cancel() -> bool:
                return self._stopping or all(i in self._cancelled for i in ids)

            results = await loop.run_in_executor(
                self.gpu, lambda: handler(self.engine, tasks, progress, cancel, self.preview_every)
            )
        except Cancelled:
            await self._after_cancel(jobs)
            return
        except Exception as exc:  # the generation failed: refund everyone in the batch
            log.exception("batch %s failed", ids)
            for job in jobs:
                await self._fail(job, _user_error(exc))
            return
        finally:
            keep_alive.cancel()
            for job in jobs:
                self.running_jobs.pop(job.id, None)
        self._update_speed(jobs, time.monotonic() - started)
        for task, job, images in zip(tasks, jobs, results, strict=True):
            if job.id in self._cancelled:
                continue  # cancelled while batched with others: already refunded
            await self._finish(job, task.params, images)

    async def _reap(self) -> None:
        """Re-queue jobs whose worker died; tell the owners of those that ran out of attempts."""
        requeued, failed = await self.queue.requeue_expired(max_attempts=self.max_attempts)
        if requeued or failed:
            log.info("reaper: %s job(s) re-queued, %s failed after too many attempts", len(requeued), len(failed))
        for job in failed:
            await self._announce_failure(job, "the bot stopped too many times while running this job")

    async def _keep_lease(self, ids: list[int]) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.queue.extend_lease(ids, self.lease_s)

    def _on_progress(self, jobs: list[Any], p: Progress) -> None:
        for job in jobs:
            if job.id not in self._cancelled:
                asyncio.ensure_future(self._safe(self.publisher.progress(job, p)))

    async def _after_cancel(self, jobs: list[Any]) -> None:
        if self._stopping:
            await self.queue.release([j.id for j in jobs if j.id not in self._cancelled])
        for job in jobs:
            self._cancelled.discard(job.id)

    # -- outcomes ------------------------------------------------------------------------------
    async def _finish(self, job: Any, params: JobParams, images: list[GeneratedImage]) -> None:
        if self.screen is not None:
            images = await self.screen(params, images)
        stored = []
        loop = asyncio.get_running_loop()
        for index, gen in enumerate(images):
            metadata = dict(gen.parameters)
            if params.user_prompt:  # what the user typed, without the quality tags: /history shows it
                metadata["user_prompt"] = params.user_prompt
            data = await loop.run_in_executor(None, gen.png_bytes)  # PNG compression off the event loop
            key = await self.store.put(data)
            await self.images.record(
                job_id=job.id,
                guild_id=job.guild_id,
                user_id=job.user_id,
                key=key,
                width=gen.image.width,
                height=gen.image.height,
                seed=gen.seed,
                params=metadata,
                batch_index=index,
            )
            stored.append({"key": key, "seed": gen.seed, "width": gen.image.width, "height": gen.image.height,
                           **({"blurred": True} if metadata.get("Safety check") == "blurred" else {})})  # fmt: skip
        await self.queue.complete(job.id, {"images": stored})
        await self.publish(job)

    async def publish(self, job: Any, recovering: bool = False) -> None:
        """Post a finished job's result once; record the message so a restart does not post again.

        `recovering`: the process may have died after posting but before recording it, so look for
        the message in the channel first (only then: a fresh result cannot have been posted yet).
        """
        if job.id in self._publishing:  # already being posted (a reconnect's recovery pass meets it)
            return
        self._publishing.add(job.id)
        try:
            job = await self.queue.get(job.id)
            if job.posted_message_id:
                return
            message_id = await self._safe(self.publisher.find_posted(job)) if recovering else None
            message_id = message_id or await self._safe(self.publisher.result(job, job.result["images"]))
            if message_id:
                await self.queue.mark_posted(job.id, message_id)
        finally:
            self._publishing.discard(job.id)

    async def republish_unposted(self) -> None:
        """After a restart: announce results that were computed but never posted."""
        for job in await self.queue.unposted():
            await self.publish(job, recovering=True)

    async def _fail(self, job: Any, error: str) -> None:
        await self.queue.fail(job.id, error)
        await self._announce_failure(job, error)

    async def _announce_failure(self, job: Any, error: str) -> None:
        await self._safe(self.publisher.failure(job, error))

    def _update_speed(self, jobs: list[Any], seconds: float) -> None:
        cost = sum(max(1, j.cost) for j in jobs)
        sample = seconds / cost
        hist = self.stats.history
        hist.append(sample)
        del hist[:-20]
        self.stats.seconds_per_cost = sorted(hist)[len(hist) // 2]

    @staticmethod
    async def _safe(awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except Exception:
            log.exception("publishing to Discord failed")
            return None


def _user_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ValueError):
        return text
    return f"generation failed ({type(exc).__name__}: {text[:300]})"

