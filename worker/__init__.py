"""The GPU worker: claims jobs from the durable queue and runs every torch call on one thread.

The asyncio loop never waits on the GPU: the engine is loaded and every generation runs on a single dedicated
thread (`gpu` executor); progress crosses back to the loop with `call_soon_threadsafe`.  The worker owns the
job life cycle after enqueue:

claim (lease; only jobs it can run, `capability`) → run (batched) → store PNGs → complete (settle credits,
record the images) → announce

and on failure: fail (refund, idempotent) → announce the failure.  A worker runs either inside the bot
(``kind="embedded"``: it announces with the bot's `Announcer` and shows progress through its publisher) or as
a process of its own (``python -m worker``, ``kind="remote"``: no Discord at all — its progress goes to SQL,
and the bot's announcer posts what it finished). It is registered as a live worker (`worker.registry`) and
beats every third of its (short) lease, renewing its jobs' leases; on every beat it re-queues the jobs of dead
workers. A result it finished while the database was unreachable is kept and completed once the database is
back (`storage.is_unavailable`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gen_core.types import Cancelled, GeneratedImage, Progress
from storage import WORK_CHANNEL, Capability, is_unavailable
from worker.announcer import Announcer
from worker.jobs import Inputs, JobParams, Task, params_of
from worker.registry import Registration

log = logging.getLogger(__name__)

T = TypeVar("T")

# A job handler runs on the GPU thread: (engine, tasks, progress, cancel, preview_every) -> images per task.
Handler = Callable[..., list[list[GeneratedImage]]]
# Where a batch's progress goes: the bot's publisher (embedded) or SQL for the bot to relay (remote).
ProgressSink = Callable[[list[Any], Progress], Awaitable[None]]


@dataclass
class WorkerStats:
    seconds_per_cost: float = 0.05  # moving estimate used for ETAs
    history: list[float] = field(default_factory=list)


class QueueProgress:
    """A remote worker's progress sink: the latest step and preview of each batch go to SQL (at most every
    ``interval_s``, and the last step always), where the bot picks them up."""

    def __init__(self, queue: Any, interval_s: float) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self._last: dict[int, float] = {}

    async def __call__(self, jobs: list[Any], p: Progress) -> None:
        key, now = jobs[0].id, time.monotonic()
        if now - self._last.get(key, 0.0) < self.interval_s and p.step < p.total:
            return
        self._last[key] = now
        preview = None
        if p.preview is not None:
            preview = await asyncio.get_running_loop().run_in_executor(None, _png, p.preview)
        await self.queue.report_progress([j.id for j in jobs], p.step, p.total, p.stage, preview)
        if p.step >= p.total:
            self._last.pop(key, None)


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Worker:
    def __init__(
        self,
        *,
        queue: Any,
        store: Any,
        engine_loader: Callable[[], Any],
        handlers: dict[str, Handler],
        load_inputs: Callable[[JobParams], Awaitable[Inputs]],
        progress: ProgressSink,
        announcer: Announcer | None = None,
        kind: str = "embedded",
        capability: Callable[[Any], Capability] | None = None,
        max_batch: int = 4,
        lease_s: float = 10.0,
        max_attempts: int = 3,
        poll_interval_s: float = 0.5,
        preview_every: int = 5,
        screen: Callable[[JobParams, list[GeneratedImage]], Awaitable[list[GeneratedImage]]] | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.engine_loader = engine_loader
        self.handlers = handlers
        self.load_inputs = load_inputs
        self.progress = progress
        self.announcer = announcer  # the bot's: results this worker finishes are posted at once
        self.capability_of = capability  # what the loaded engine can run (None: anything queued)
        self.capability: Capability | None = None
        self.max_batch = max_batch
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.preview_every = preview_every
        self.screen = screen  # e.g. an image safety check: may replace images before they are stored
        self.registration = Registration(queue, kind=kind, lease_s=lease_s, max_attempts=max_attempts)
        self.worker_id = self.registration.worker_id
        self.gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self.engine: Any = None
        self.stats = WorkerStats()
        self.running_jobs: dict[int, Any] = {}
        self._cancelled: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._killed = False
        self._task: asyncio.Task | None = None
        self._beat_task: asyncio.Task | None = None
        self._unlisten: Callable[[], Awaitable[None]] | None = None

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self.gpu, self.engine_loader)
        if self.capability_of is not None:
            self.capability = self.registration.capability = self.capability_of(self.engine)
        await self.registration.register()
        await self.registration.reap()
        try:  # PostgreSQL: claim as soon as a job for this model is queued, not at the next poll
            self._unlisten = await self.queue.listen(self._on_queued, WORK_CHANNEL)
        except Exception:  # no notifications: polling alone still finds every job
            log.exception("could not listen for queued jobs; polling")
        self._task = asyncio.create_task(self._loop(), name="gpu-worker")
        self._beat_task = asyncio.create_task(
            self.registration.keep_alive(lambda: set(self.running_jobs), self._cancelled.update), name="worker-heartbeat"
        )

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
        await self._stop_background()
        if self._task is not None and not self._killed:  # a worker that never started never registered
            await self.registration.leave()  # its unanswered jobs go to a live worker at once
        self.gpu.shutdown(wait=False, cancel_futures=True)

    async def kill(self) -> None:
        """Stop dead, as if the process were killed: no more beats, running jobs keep their lease (tests)."""
        self._stopping = self._killed = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._stop_background()

    async def _stop_background(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            await asyncio.gather(self._beat_task, return_exceptions=True)
        if self._unlisten is not None:
            await self._unlisten()
            self._unlisten = None

    def _on_queued(self, model: str) -> None:
        if self.capability is None or model == self.capability.model:
            self._wake.set()

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
                jobs = await self.queue.claim(
                    self.worker_id, max_batch=self.max_batch, lease_s=self.lease_s, capability=self.capability
                )
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
            except Exception:  # storing failed: the lease brings the jobs back
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

    def _on_progress(self, jobs: list[Any], p: Progress) -> None:
        live = [job for job in jobs if job.id not in self._cancelled]
        if live:
            asyncio.ensure_future(_logged(self.progress(live, p), "reporting progress"))

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
        # the images enter the history with the completion, or not at all (cancelled or reaped meanwhile); the
        # result names the worker that made it (``jobs.worker_id`` becomes the announcer's once it adopts the job)
        completed = await self._until_reachable(
            lambda: self.queue.complete(job.id, {"images": stored, "worker": self.worker_id}, images=records, worker_id=self.worker_id)
        )
        if completed and self.announcer is not None:
            await self.announcer.announce(job, fresh=True)

    async def _fail(self, job: Any, error: str) -> None:
        if await self._until_reachable(lambda: self.queue.fail(job.id, error)) and self.announcer is not None:
            await self.announcer.announce(job, fresh=True)

    async def _until_reachable(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again while the database cannot be reached (a restart, a cut network): a finished
        batch's outcome is not thrown away for it."""
        delay = 0.2
        while True:
            try:
                return await call()
            except Exception as exc:
                if not is_unavailable(exc) or self._killed:
                    raise
                log.warning("the database is unreachable (%s); trying again in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.lease_s)

    def _update_speed(self, jobs: list[Any], seconds: float) -> None:
        cost = sum(max(1, j.cost) for j in jobs)
        sample = seconds / cost
        hist = self.stats.history
        hist.append(sample)
        del hist[:-20]
        self.stats.seconds_per_cost = sorted(hist)[len(hist) // 2]


async def _logged(awaitable: Awaitable[Any], what: str) -> Any:
    try:
        return await awaitable
    except Exception:
        log.exception("%s failed", what)
        return None


def _user_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ValueError):
        return text
    return f"generation failed ({type(exc).__name__}: {text[:300]})"
