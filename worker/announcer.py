"""Every finished job's one final answer in Discord — the result, or the failure notice, or a DM — given by the
process that talks to Discord: a bot, with or without a worker of its own (``worker.embedded``).

A remote worker (``python -m worker``) never posts: it completes the job in SQL (PostgreSQL notifies the bot)
and the bot's announcer, registered as a live worker of kind "embedded" or "bot", adopts every finished job
that no live announcer holds and posts it (``JobQueue.due_announcements``). It relays a remote worker's
progress (``JobQueue.progress_of``) to the requester the same way. Announcing is durable: a done or failed
job stays unanswered in SQL until its result, failure notice or DM is delivered, so a restart — after any
delay — announces what the dead process had not (looking first for a message it may already have posted).
A try that fails (channel deleted, permission lost, Discord down) is retried with backoff; after
``announce_retries`` failed tries a result is refunded and its owner told by DM (nothing public; nothing if
their DMs are closed).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from gen_core.types import Progress

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What announcing needs from the Discord side (implemented in services.publisher)."""

    status: dict[int, Any]  # the jobs whose progress someone is shown, by id

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


class Announcer:
    def __init__(
        self,
        *,
        queue: Any,
        publisher: Publisher,
        announcer_id: Callable[[], str],
        announce_retries: int = 6,
        announce_backoff_s: float = 5.0,
        announce_backoff_max_s: float = 60.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.queue = queue
        self.publisher = publisher
        self.announcer_id = announcer_id  # the registry id of this process (jobs it adopts become its own)
        self.announce_retries = announce_retries
        self.announce_backoff_s = announce_backoff_s
        self.announce_backoff_max_s = announce_backoff_max_s
        self.poll_interval_s = poll_interval_s
        self._announcing: dict[int, asyncio.Task] = {}  # announcements started by a scan
        self._busy: set[int] = set()  # jobs being announced now
        self._wake = asyncio.Event()
        self._relayed: datetime | None = None
        self._task: asyncio.Task | None = None
        self._unlisten: Callable[[], Awaitable[None]] | None = None

    # -- the watch: finished jobs and remote progress, on a notification or every poll ----------------------
    async def start(self) -> None:
        try:
            self._unlisten = await self.queue.listen(lambda _payload: self._wake.set())
        except Exception:  # no notifications: polling alone still finds everything
            log.exception("could not listen for job notifications; polling")
        self._task = asyncio.create_task(self._watch(), name="announcer")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._announcing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._unlisten is not None:
            await self._unlisten()

    async def _watch(self) -> None:
        # with notifications a slow poll is only the fallback for a lost listening connection
        interval = self.poll_interval_s if self._unlisten is None else max(2.0, self.poll_interval_s)
        while True:
            self._wake.clear()
            try:
                await self.announce_due()
                await self.relay_progress()
            except Exception:  # the database is briefly unavailable: look again, don't die
                log.exception("watching finished jobs failed")
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass

    async def relay_progress(self) -> None:
        """Show the requester what a remote worker reported since the last look."""
        tracked = list(self.publisher.status)
        if not tracked:
            return
        reports = await self.queue.progress_of(tracked, since=self._relayed)
        for report in reports:
            self._relayed = max(self._relayed or report.updated_at, report.updated_at)
            job = await self.queue.get(report.job_id)
            preview = None
            if report.preview:
                from PIL import Image

                preview = Image.open(io.BytesIO(report.preview))
            progress = Progress(report.step, report.total, (0,), preview=preview, stage=report.stage)
            await _safe(self.publisher.progress(job, progress))

    # -- announcing ---------------------------------------------------------------------------------------------
    async def announce_due(self) -> None:
        """Announce the unanswered jobs that are due: this process's retries, remote workers' results, and
        those of dead processes."""
        for job in await self.queue.due_announcements(self.announcer_id()):
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
        if job.id in self._busy:  # already being announced (a scan meets a fresh result)
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
            await _safe(self.publisher.private_notice(job, text, recovering=False))
        await self.queue.mark_answered(job.id)  # what could be said has been said


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
