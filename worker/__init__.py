"""The GPU worker: claims jobs from the durable queue and runs every torch call on one thread.

The asyncio loop that talks to Discord never waits on the GPU: the engine is loaded and every
generation runs on a single dedicated thread (`gpu` executor); progress crosses back to the loop
with `call_soon_threadsafe`.  The worker owns the job life cycle after enqueue:

claim (lease) → run (batched) → store PNGs → complete (settle credits, record the images) → announce

and on failure: fail (refund, idempotent) → announce the failure.  The worker is registered as a
live worker (`worker.registry`) and beats every third of its (short) lease, renewing its jobs'
leases; on every beat it re-queues the jobs of dead workers and announces what is due.

Announcing is durable: a done or failed job stays unanswered in SQL until its result, failure
notice or DM is delivered, so a restart — after any delay — announces what the dead process had
not (looking first for a message it may already have posted). A try that fails (channel deleted,
permission lost, Discord down) is retried with backoff; after `announce_retries` failed tries a
result is refunded and its owner told by DM (nothing public; nothing if their DMs are closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from gen_core.types import Cancelled, GeneratedImage, Progress
from worker.jobs import Inputs, JobParams, Task, params_of
from worker.registry import Registration

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the worker needs from the Discord side (implemented in services.publisher)."""

    async def progress(self, job: Any, progress: Progress) -> None: ...

    async def result(self, job: Any, images: list[dict[str, Any]]) -> int:
        """Post a result; its message id. Raises if it could not be posted."""

    async def failure(self, job: Any, error: str) -> None:
        """Tell the owner that the job failed and was refunded. Raises if that could not be posted."""

    async def find_posted(self, job: Any) -> int | None:
        """The id of the result message or failure notice of `job` already posted (after a crash)."""

    async def private_notice(self, job: Any, text: str, *, recovering: bool) -> None:
        """Tell the owner `text` privately (a DM; nothing if their DMs are closed); with `recovering`, not
        if an earlier process already did."""


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
        publisher: Publisher,
        engine_loader: Callable[[], Any],
        handlers: dict[str, Handler],
        load_inputs: Callable[[JobParams], Awaitable[Inputs]],
        max_batch: int = 4,
        lease_s: float = 10.0,
        max_attempts: int = 3,
        poll_interval_s: float = 0.5,
        preview_every: int = 5,
        announce_retries: int = 6,
        announce_backoff_s: float = 5.0,
        announce_backoff_max_s: float = 60.0,
        screen: Callable[[JobParams, list[GeneratedImage]], Awaitable[list[GeneratedImage]]] | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.publisher = publisher
        self.engine_loader = engine_loader
        self.handlers = handlers
        self.load_inputs = load_inputs
        self.max_batch = max_batch
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.preview_every = preview_every
        self.announce_retries = announce_retries
        self.announce_backoff_s = announce_backoff_s
        self.announce_backoff_max_s = announce_backoff_max_s
        self.screen = screen  # e.g. an image safety check: may replace images before they are stored
        self.registration = Registration(queue, kind="embedded", lease_s=lease_s, max_attempts=max_attempts)
        self.worker_id = self.registration.worker_id
        self.gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self.engine: Any = None
        self.stats = WorkerStats()
        self.running_jobs: dict[int, Any] = {}
        self._cancelled: set[int] = set()
        self._announcing: dict[int, asyncio.Task] = {}  # announcements started by a heartbeat's scan
        self._busy: set[int] = set()  # jobs being announced now
        self._wake = asyncio.Event()
        self._stopping = False
        self._killed = False
        self._task: asyncio.Task | None = None
        self._beat_task: asyncio.Task | None = None

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self.gpu, self.engine_loader)
        await self.registration.register()
        await self.registration.reap()
        self._task = asyncio.create_task(self._loop(), name="gpu-worker")
        self._beat_task = asyncio.create_task(self._heartbeat(), name="worker-heartbeat")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; let the running batch finish (or release it after `timeout`), leave the registry."""
        self._stopping = True
        self._wake.set()
        if self._task and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._cancelled.update(self.running_jobs)
                await self.queue.release(list(self.running_jobs))
                self._task.cancel()
        await self._stop_beating()
        if self._task is not None and not self._killed:  # a worker that never started never registered
            await self.registration.leave()  # its unanswered jobs go to a live worker at once
        self.gpu.shutdown(wait=False, cancel_futures=True)

    async def kill(self) -> None:
        """Stop dead, as if the process were killed: no more beats, running jobs keep their lease (tests)."""
        self._stopping = self._killed = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._stop_beating()

    async def _stop_beating(self) -> None:
        tasks = [t for t in (self._beat_task, *self._announcing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        """A job was enqueued: claim now rather than at the next poll."""
        self._wake.set()

    def request_cancel(self, job_id: int) -> None:
        """Stop a running job at its next denoising step (credits are refunded by the queue)."""
        self._cancelled.add(job_id)

    # -- main loop -------------------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._stopping:
            try:
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
            for job in jobs:
                self.running_jobs.pop(job.id, None)
        self._update_speed(jobs, time.monotonic() - started)
        for task, job, images in zip(tasks, jobs, results, strict=True):
            if job.id in self._cancelled:
                continue  # cancelled while batched with others: already refunded
            await self._finish(job, task.params, images)

    async def _heartbeat(self) -> None:
        """Every third of the lease: renew this worker and its leases, re-queue dead workers' jobs, announce
        what is due (its own retries, and results of dead workers). A job it no longer holds stops."""
        while True:
            try:
                held = set(await self.registration.beat())
                lost = [i for i in self.running_jobs if i not in held]
                if lost:  # cancelled, or reaped while this worker stalled: someone else answers for it
                    self._cancelled.update(lost)
                await self.registration.reap()
                await self.announce_due()
            except Exception:  # the database is briefly unavailable: beat again, don't die
                log.exception("heartbeat failed")
            await asyncio.sleep(self.lease_s / 3)

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
        stored, records = [], []
        loop = asyncio.get_running_loop()
        for index, gen in enumerate(images):
            metadata = dict(gen.parameters)
            if params.user_prompt:  # what the user typed, without the quality tags: /history shows it
                metadata["user_prompt"] = params.user_prompt
            data = await loop.run_in_executor(None, gen.png_bytes)  # PNG compression off the event loop
            key = await self.store.put(data)
            size = {"width": gen.image.width, "height": gen.image.height}
            records.append({"key": key, "seed": gen.seed, "params": metadata, "batch_index": index, **size})
            stored.append({"key": key, "seed": gen.seed, **size,
                           **({"blurred": True} if metadata.get("Safety check") == "blurred" else {})})  # fmt: skip
        # the images enter the history with the completion, or not at all (cancelled or reaped meanwhile)
        if await self.queue.complete(job.id, {"images": stored}, images=records, worker_id=self.worker_id):
            await self.announce(job, fresh=True)

    async def _fail(self, job: Any, error: str) -> None:
        if await self.queue.fail(job.id, error):
            await self.announce(job, fresh=True)

    async def announce_due(self) -> None:
        """Announce the unanswered jobs that are due: this worker's retries, and those of dead workers."""
        for job in await self.queue.due_announcements(self.worker_id):
            if job.id not in self._announcing and job.id not in self._busy:
                task = asyncio.create_task(self.announce(job), name=f"announce-{job.id}")
                self._announcing[job.id] = task
                task.add_done_callback(lambda t, i=job.id: self._announcing.pop(i, None))

    async def announce(self, job: Any, fresh: bool = False) -> None:
        """Give a finished job its one final answer: the result, or the failure notice, in its channel.

        `fresh`: this process just finished the job, so nothing can have been posted yet; otherwise an
        earlier process may have posted it and died before recording it, so look for the message first.
        A failed try is retried with backoff; after `announce_retries` of them a result is refunded, and
        the owner is told privately instead.
        """
        if job.id in self._busy:  # already being announced (a heartbeat's scan meets a fresh result)
            return
        self._busy.add(job.id)
        try:
            await self._announce(job, fresh)
        finally:
            self._busy.discard(job.id)

    async def _announce(self, job: Any, fresh: bool) -> None:
        job = await self.queue.get(job.id)
        if job is None or job.answered_at is not None:
            return
        try:
            if job.status == "done":
                found = None if fresh else await self.publisher.find_posted(job)
                await self.queue.mark_posted(job.id, found or await self.publisher.result(job, job.result["images"]))
                return
            if job.result is not None:  # failed after it was done: its result could not be posted
                text = f"Your result of job #{job.id} could not be posted in <#{job.channel_id}> ({job.error}). " \
                       f"Your {job.cost} credits were refunded."
                await self.publisher.private_notice(job, text, recovering=not fresh)
            elif fresh or not await self.publisher.find_posted(job):
                await self.publisher.failure(job, job.error or "unknown error")
            await self.queue.mark_answered(job.id)
        except Exception as exc:
            await self._announce_failed(job, exc)

    async def _announce_failed(self, job: Any, exc: Exception) -> None:
        delay = min(self.announce_backoff_max_s, self.announce_backoff_s * 2**job.announce_attempts)
        tries = await self.queue.postpone_announcement(job.id, delay)
        log.info("announcing job %s failed (try %s): %s", job.id, tries, exc)
        if tries <= self.announce_retries:
            return
        reason = _post_error(exc)
        if job.status == "done":
            if await self.queue.refund_unposted(job.id, reason):
                await self._announce(job, fresh=True)
            return
        if job.result is None:  # a failure notice that cannot be posted: tell the owner privately
            text = f"Job #{job.id} failed: {job.error}\nYour {job.cost} credits were refunded."
            await self._safe(self.publisher.private_notice(job, text, recovering=False))
        await self.queue.mark_answered(job.id)  # what could be said has been said

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


def _post_error(exc: Exception) -> str:
    """Why a message could not be posted, in words for its owner."""
    status = getattr(exc, "status", None)
    if status == 404:
        return "the channel no longer exists"
    if status == 403:
        return "I may not post there any more"
    if isinstance(status, int) and status >= 500:
        return "Discord kept failing"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _user_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ValueError):
        return text
    return f"generation failed ({type(exc).__name__}: {text[:300]})"

