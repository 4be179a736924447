"""A worker's place in the registry of live workers (``storage``'s ``workers`` table).

A worker registers when it starts and beats every third of its lease: one transaction renews its row and
the leases of all its running jobs. Whoever reaps (every live worker, on every beat) re-queues the jobs of
dead workers: a worker whose row expired (it stopped beating: crashed, hung, cut off), and — at once,
without waiting for the lease — a worker on this host whose process is gone, or that had this very
process id (an earlier incarnation: only one worker runs per process). A live worker's jobs are never
taken, however many processes share the database. The embedded worker of a bot registers as
``"embedded"``, a separate worker process (``python -m worker``) as ``"remote"``, with what it can run (its
``Capability``: the model is then recorded as served), and a bot without a worker as ``"bot"`` (it only posts
results).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import Capability

log = logging.getLogger(__name__)


def host_identity() -> str:
    """This machine: its host name and boot id (two machines that share a name are still two hosts)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()[:200]}/{boot}" if boot else socket.gethostname()[:255]


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registration:
    def __init__(self, queue: Any, *, kind: str, lease_s: float, max_attempts: int) -> None:
        self.queue = queue
        self.kind = kind
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.host = host_identity()
        self.pid = os.getpid()
        self.worker_id = f"{kind}-{socket.gethostname()[:40]}-{self.pid}-{uuid.uuid4().hex[:8]}"
        self.capability: Capability | None = None  # what it serves (set once its model is loaded)

    async def register(self) -> None:
        await self.queue.register_worker(
            self.worker_id, kind=self.kind, host=self.host, pid=self.pid, lease_s=self.lease_s, capability=self.capability
        )

    async def keep_alive(
        self, running: Callable[[], set[int]] = set, lost: Callable[[set[int]], None] | None = None
    ) -> None:
        """Beat every third of the lease and reap dead workers, until cancelled; ``lost`` is told which of the
        jobs ``running`` before the beat this worker no longer holds (a job claimed while the beat ran is not
        among them). A database that is briefly unreachable only skips beats."""
        while True:
            try:
                before = running()
                gone = before - set(await self.beat())
                if gone and lost is not None:
                    lost(gone)
                await self.reap()
            except Exception:  # the database is briefly unavailable: beat again, don't die
                log.exception("heartbeat failed")
            await asyncio.sleep(self.lease_s / 3)

    async def beat(self) -> list[int]:
        """Renew this worker and its leases; the ids of the running jobs it still holds."""
        held = await self.queue.heartbeat(self.worker_id, self.lease_s)
        if held is None:  # taken for dead (a long stall): its jobs went back to the queue; live again
            log.warning("worker %s was taken for dead; registering again", self.worker_id)
            await self.register()
            return []
        return held

    async def dead_here(self) -> list[str]:
        """Registered workers of this host whose process is gone (or was this process)."""
        return [
            w.id
            for w in await self.queue.workers()
            if w.id != self.worker_id and w.host == self.host and (w.pid == self.pid or not process_alive(w.pid))
        ]

    async def reap(self) -> tuple[list[Any], list[Any]]:
        """Re-queue the jobs of dead workers (or fail those out of attempts); ``(requeued, failed)``."""
        requeued, failed = await self.queue.requeue_expired(max_attempts=self.max_attempts, dead=await self.dead_here())
        if requeued or failed:
            log.info("reaper: %s job(s) re-queued, %s failed after too many attempts", len(requeued), len(failed))
        return requeued, failed

    async def leave(self) -> None:
        await self.queue.deregister_worker(self.worker_id)
