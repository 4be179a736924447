"""The durable, fair job queue.

``JobQueue`` is the interface the bot and the worker code against; calling ``JobQueue(db, policy)`` builds the
SQL implementation (:class:`SqlJobQueue`), which works on SQLite and PostgreSQL. A PostgreSQL + procrastinate
backend can subclass ``JobQueue`` later and be chosen the same way.

Fairness is start-time fair queuing across users (guild-agnostic: one GPU, one queue). A job's start tag is
``max(virtual_now, user_finish)``, the user's finish tag then advances by the job's cost, and claims take the
smallest ``(start_tag, id)``; ``virtual_now`` is the start tag of the last claimed job. A burst of twenty jobs
from one user therefore gets tags 0, c, 2c, … while a newcomer's single job gets ``virtual_now`` and runs next.

Credits: enqueue reserves the cost (``reserve:<job>``); completion settles it (``settle:<job>``, delta 0, or a
partial refund if the final cost is lower); failure, cancellation or exhausted retries refund it in full
(``refund:<job>``). Every state change is guarded by the job's current status inside one transaction, so each
of these happens at most once however often it is called.
"""

from __future__ import annotations

import abc
import builtins
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Integer, Table, bindparam, case, delete, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from storage import _sql
from storage.db import Database
from storage.errors import InsufficientCredits, QueueFull
from storage.images import ImageRepo
from storage.models import (
    ACTIVE_STATUSES,
    FairShare,
    GuildSettings,
    Image,
    Job,
    JobStatus,
    LedgerKind,
    QueueClock,
    WorkerRecord,
)
from storage.policy import CostPolicy

log = logging.getLogger(__name__)

jobs: Table = Job.__table__  # type: ignore[assignment]
fair_share: Table = FairShare.__table__  # type: ignore[assignment]
queue_clock: Table = QueueClock.__table__  # type: ignore[assignment]
workers: Table = WorkerRecord.__table__  # type: ignore[assignment]
images_table: Table = Image.__table__  # type: ignore[assignment]

QUEUED = JobStatus.QUEUED.value
RUNNING = JobStatus.RUNNING.value
DONE = JobStatus.DONE.value
FAILED = JobStatus.FAILED.value


@dataclass(frozen=True)
class JobSpec:
    """What to run and who pays. ``batch_key`` groups jobs that can share one pipeline call (same kind, model,
    size, steps, sampler, cfg, modules — computed by the caller); ``cost`` comes from ``compute_cost``;
    ``interaction_id`` is the request's idempotency key — a Discord interaction id, or any string up to 200
    characters such as ``"<interaction>:<n>"`` when one request makes several jobs — and makes enqueue
    idempotent (a retried request returns the existing job). It is stored, and read back, as a string."""

    kind: str
    guild_id: int
    channel_id: int | None
    user_id: int
    interaction_id: int | str | None
    params: dict[str, Any] = field(default_factory=dict)
    params_version: int = 1  # the layout of ``params`` (the caller's schema; see worker.jobs)
    batch_key: str = ""
    cost: int = 1
    parent_job_id: int | None = None


class JobQueue(abc.ABC):
    """Interface of the durable job queue. ``JobQueue(db, policy)`` returns a :class:`SqlJobQueue`."""

    def __new__(cls, *args: Any, **kwargs: Any) -> JobQueue:
        if cls is JobQueue:
            cls = SqlJobQueue
        return super().__new__(cls)

    # producers -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, spec: JobSpec) -> tuple[Job, bool]:
        """Insert the job and reserve its cost in one transaction; ``(job, created)``. Idempotent on
        ``interaction_id`` (``created=False``, no second charge). Raises ``InsufficientCredits`` or
        ``QueueFull`` with nothing written."""

    @abc.abstractmethod
    async def cancel(self, job_id: int, actor_id: int | None) -> bool:
        """Cancel a queued or running job and refund it; False if it had already finished."""

    # workers ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(self, worker_id: str, max_batch: int = 4, lease_s: float = 120) -> list[Job]:
        """Next job in fair order plus up to ``max_batch - 1`` queued jobs with the same ``batch_key``; all
        become ``running`` with a lease and ``attempts + 1``. Skips paused guilds. Empty list if idle."""

    @abc.abstractmethod
    async def complete(
        self,
        job_id: int,
        result: dict[str, Any],
        final_cost: int | None = None,
        *,
        images: Iterable[dict[str, Any]] = (),
        worker_id: str | None = None,
    ) -> bool:
        """Done + settle, and the job's ``images`` recorded (``Image`` fields: key, width, height, seed, params,
        batch_index) — all in one transaction, so a job cancelled or refunded meanwhile leaves no image in
        anyone's history. ``final_cost`` below the reserved cost refunds the difference. With ``worker_id``, only
        if that worker still holds the job. False (and nothing changes) otherwise, or if the job was already
        done, failed or cancelled."""

    @abc.abstractmethod
    async def fail(self, job_id: int, error: str) -> bool:
        """Failed + full refund, exactly once. False if the job had already finished."""

    @abc.abstractmethod
    async def is_cancelled(self, job_id: int) -> bool: ...

    @abc.abstractmethod
    async def requeue_expired(
        self, max_attempts: int = 3, dead: Iterable[str] = ()
    ) -> tuple[list[Job], list[Job]]:
        """Reaper: running jobs whose lease expired, or whose worker is dead (its registry row expired, or it is
        named in ``dead`` — a worker known to be gone, such as a process missing from its host), go back to
        queued, or — after ``max_attempts`` claims — fail with a refund; dead workers leave the registry.
        Returns ``(requeued, failed)`` jobs in their new state."""

    # the worker registry -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def register_worker(self, worker_id: str, *, kind: str, host: str, pid: int, lease_s: float) -> None:
        """Add (or renew) a live worker: ``kind`` "embedded" (in a bot) or "remote", the ``host`` and ``pid`` of
        its process; it is live for ``lease_s`` unless it beats again."""

    @abc.abstractmethod
    async def heartbeat(self, worker_id: str, lease_s: float) -> builtins.list[int] | None:
        """The worker is alive: renew its row and the leases of its running jobs for ``lease_s``, in one
        transaction. Returns the ids of the jobs it still holds (a job missing was cancelled or reaped: stop
        it), or None if the worker is not registered (it was taken for dead: register again)."""

    @abc.abstractmethod
    async def deregister_worker(self, worker_id: str) -> None:
        """A worker stops (after releasing its jobs)."""

    @abc.abstractmethod
    async def workers(self) -> builtins.list[WorkerRecord]:
        """The registered workers, live or not yet reaped."""

    @abc.abstractmethod
    async def release(self, job_ids: Iterable[int]) -> int:
        """Graceful shutdown: running jobs back to queued without counting the attempt; returns how many."""

    @abc.abstractmethod
    async def mark_posted(self, job_id: int, message_id: int) -> bool:
        """Record the result message (the job is answered); True only for the first call (later calls keep the
        first id)."""

    # announcements: every done or failed job gets exactly one final answer --------------------------------
    @abc.abstractmethod
    async def mark_answered(self, job_id: int) -> bool:
        """The job's final answer (a failure notice, a DM, or nothing where nothing can be said) is
        delivered; True only for the first call."""

    @abc.abstractmethod
    async def due_announcements(self, worker_id: str, limit: int = 20) -> builtins.list[Job]:
        """Done or failed jobs still unanswered whose next try is due and that are this worker's or belonged to
        a worker no longer alive (they become this worker's) — for any age: a result found after a long outage
        is still announced."""

    @abc.abstractmethod
    async def postpone_announcement(self, job_id: int, delay_s: float) -> int:
        """An announcement failed: try again after ``delay_s``; returns the number of failed tries so far."""

    @abc.abstractmethod
    async def refund_unposted(self, job_id: int, reason: str) -> bool:
        """A done job whose result could not be posted: failed, its charge refunded and its images taken out of
        the history, in one transaction (its ``result`` stays: a failed job with a result is one that could not
        be posted). False if the job is not done-and-unanswered."""

    @abc.abstractmethod
    async def by_message(self, message_id: int) -> Job | None:
        """The job whose result was posted as ``message_id`` (reactions and buttons on a result)."""

    # queries / admin ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, job_id: int) -> Job | None: ...

    @abc.abstractmethod
    async def list(
        self,
        guild_id: int | None = None,
        user_id: int | None = None,
        statuses: Iterable[str] | None = ACTIVE_STATUSES,
        limit: int = 100,
    ) -> builtins.list[Job]: ...

    @abc.abstractmethod
    async def position(self, job_id: int) -> int:
        """1 = next to be claimed; 0 when the job is not queued (running or finished)."""

    @abc.abstractmethod
    async def eta(self, job_id: int, seconds_per_cost_unit: float) -> float:
        """Seconds until the job should be finished: work queued ahead of it, the remaining work of running
        jobs, and its own cost, at ``seconds_per_cost_unit``. 0.0 for finished jobs."""

    @abc.abstractmethod
    async def pause(self, guild_id: int, actor_id: int | None = None) -> None: ...

    @abc.abstractmethod
    async def resume(self, guild_id: int, actor_id: int | None = None) -> None: ...

    @abc.abstractmethod
    async def is_paused(self, guild_id: int) -> bool: ...

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Number of jobs per status."""


def _paused_guilds() -> Any:
    return select(GuildSettings.guild_id).where(GuildSettings.paused.is_(True))


# Hot statements are built once (with bind parameters) and reused: building a SQLAlchemy statement costs several
# times more than SQLite needs to run it.
_ENQUEUE_CHECKS = select(
    select(jobs.c.id).where(jobs.c.interaction_id == bindparam("p_interaction_id")).scalar_subquery(),
    select(GuildSettings.settings).where(GuildSettings.guild_id == bindparam("p_guild_id")).scalar_subquery(),
)
_QUEUED_OF_USER = (
    select(func.count())
    .select_from(jobs)
    .where(jobs.c.guild_id == bindparam("p_guild_id"), jobs.c.user_id == bindparam("p_user_id"), jobs.c.status == QUEUED)
)
_INSERT_JOB = jobs.insert().returning(jobs.c.id)
_CLAIMABLE = (jobs.c.status == QUEUED, jobs.c.guild_id.not_in(_paused_guilds()))
_CLAIM_HEAD = (
    select(jobs.c.id, jobs.c.batch_key, jobs.c.start_tag)
    .where(*_CLAIMABLE)
    .order_by(jobs.c.start_tag, jobs.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_CLAIM_MATES = (
    select(jobs.c.id)
    .where(*_CLAIMABLE, jobs.c.batch_key == bindparam("p_batch_key"), jobs.c.id != bindparam("p_head_id"))
    .order_by(jobs.c.start_tag, jobs.c.id)
    .limit(bindparam("p_limit", type_=Integer()))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("p_ids", expanding=True)), jobs.c.status == QUEUED)
    .values(
        status=RUNNING,
        worker_id=bindparam("p_worker_id"),
        lease_expires_at=bindparam("p_lease"),
        attempts=jobs.c.attempts + 1,
        started_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
    )
    .returning(*jobs.c)
)
_ADVANCE_CLOCK = (
    update(queue_clock)
    .where(queue_clock.c.id == 1, queue_clock.c.virtual_now < bindparam("p_tag"))
    .values(virtual_now=bindparam("p_tag"))
)
_FINISH = (
    update(jobs)
    .where(jobs.c.id == bindparam("p_job_id"), jobs.c.status.in_(ACTIVE_STATUSES))
    .values(
        status=bindparam("p_status"),
        finished_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
        lease_expires_at=None,
        result=bindparam("p_result", type_=jobs.c.result.type),
        error=bindparam("p_error"),
        cancelled_by=bindparam("p_cancelled_by"),
        answered_at=bindparam("p_answered_at", type_=jobs.c.answered_at.type),
    )
    .returning(jobs.c.account_id, jobs.c.cost)
)
_STATUS = select(jobs.c.status).where(jobs.c.id == bindparam("p_job_id"))
_MARK_POSTED = (
    update(jobs)
    .where(jobs.c.id == bindparam("p_job_id"), jobs.c.posted_message_id.is_(None))
    .values(posted_message_id=bindparam("p_message_id"), answered_at=bindparam("p_now"), updated_at=bindparam("p_now"))
    .returning(jobs.c.id)
)
_MARK_ANSWERED = (
    update(jobs)
    .where(jobs.c.id == bindparam("p_job_id"), jobs.c.answered_at.is_(None))
    .values(answered_at=bindparam("p_now"), updated_at=bindparam("p_now"))
    .returning(jobs.c.id)
)
_HEARTBEAT = (
    update(workers)
    .where(workers.c.id == bindparam("p_worker_id"))
    .values(heartbeat_at=bindparam("p_now"), expires_at=bindparam("p_lease"))
    .returning(workers.c.id)
)
_RENEW_LEASES = (
    update(jobs)
    .where(jobs.c.worker_id == bindparam("p_worker_id"), jobs.c.status == RUNNING)
    .values(lease_expires_at=bindparam("p_lease"))
    .returning(jobs.c.id)
)
_INSERT_IMAGE = images_table.insert()
_fair_share_upserts: dict[str, Any] = {}


def _fair_share_upsert(s: Session) -> Any:
    """``start = max(virtual_now, user_finish)``; ``user_finish = start + cost`` — one atomic upsert returning
    the new finish tag (built once per dialect)."""
    dialect = s.get_bind().dialect.name
    stmt = _fair_share_upserts.get(dialect)
    if stmt is None:
        virtual_now = select(queue_clock.c.virtual_now).where(queue_clock.c.id == 1).scalar_subquery()
        later = case((fair_share.c.finish_tag > virtual_now, fair_share.c.finish_tag), else_=virtual_now)
        cost = bindparam("p_cost", type_=BigInteger())
        stmt = (
            _sql.upsert(s, fair_share)
            .values(user_id=bindparam("p_user_id"), finish_tag=virtual_now + cost)
            .on_conflict_do_update(index_elements=[fair_share.c.user_id], set_={"finish_tag": later + cost})
            .returning(fair_share.c.finish_tag)
        )
        _fair_share_upserts[dialect] = stmt
    return stmt


def _detached_job(values: Any) -> Job:
    """A ``Job`` built from a full row, in the detached state (as if loaded by a session that has closed)."""
    job = Job(**dict(values))
    make_transient_to_detached(job)
    return job


class SqlJobQueue(JobQueue):
    """The queue on SQLite or PostgreSQL. Each method is one transaction (``Database.run_write`` /
    ``run_read``); every state change is conditional on the job's current status, so concurrent or repeated
    calls cannot double-charge, double-refund or double-claim."""

    def __init__(self, db: Database, policy: CostPolicy | None = None) -> None:
        self.db = db
        self.policy = policy or CostPolicy()
        #: the image records of the same database (a convenience for the worker: ``queue.images.record(...)``)
        self.images = ImageRepo(db)

    # enqueue ---------------------------------------------------------------------------------------------
    async def enqueue(self, spec: JobSpec) -> tuple[Job, bool]:
        if spec.cost < 0:
            raise ValueError(f"cost must be >= 0, got {spec.cost}")
        if spec.interaction_id is not None and not isinstance(spec.interaction_id, str):
            spec = dataclasses.replace(spec, interaction_id=str(spec.interaction_id))
        if spec.interaction_id is not None and len(spec.interaction_id) > 200:
            raise ValueError("interaction_id is longer than 200 characters")
        now = self.db.now()
        try:
            job, created = await self.db.run_write(lambda s: self._enqueue(s, spec, now))
        except IntegrityError:
            # a concurrent enqueue of the same request won the race (PostgreSQL); return its job
            if spec.interaction_id is None:
                raise
            existing = await self.db.run_read(
                lambda s: s.scalar(select(Job).where(Job.interaction_id == spec.interaction_id))
            )
            if existing is None:
                raise
            return existing, False
        if created:
            log.debug(
                "enqueued job %s (user %s, cost %s, tag %s)", job.id, spec.user_id, spec.cost, job.start_tag
            )
        return job, created

    def _enqueue(self, s: Session, spec: JobSpec, now: datetime) -> tuple[Job, bool]:
        existing_id, settings = s.execute(
            _ENQUEUE_CHECKS, {"p_interaction_id": spec.interaction_id, "p_guild_id": spec.guild_id}
        ).one()
        if existing_id is not None:
            existing = s.get(Job, existing_id)
            assert existing is not None
            return existing, False
        policy = _sql.policy_from_settings(self.policy, settings)
        # the account row lock (PostgreSQL) serialises this user's enqueues in the guild before counting
        account = _sql.open_account(s, spec.guild_id, spec.user_id, policy, now, lock=True)
        if s.scalar(_QUEUED_OF_USER, {"p_guild_id": spec.guild_id, "p_user_id": spec.user_id}) >= policy.max_queued_per_user:
            raise QueueFull(policy.max_queued_per_user)
        if account.balance < spec.cost:
            raise InsufficientCredits(spec.cost, account.balance)
        finish_tag = s.scalar(_fair_share_upsert(s), {"p_user_id": spec.user_id, "p_cost": spec.cost})
        values: dict[str, Any] = {
            "kind": spec.kind,
            "guild_id": spec.guild_id,
            "channel_id": spec.channel_id,
            "user_id": spec.user_id,
            "account_id": account.id,
            "interaction_id": spec.interaction_id,
            "parent_job_id": spec.parent_job_id,
            "params": dict(spec.params),
            "params_version": spec.params_version,
            "batch_key": spec.batch_key,
            "cost": spec.cost,
            "status": QUEUED,
            "start_tag": int(finish_tag) - spec.cost,
            "attempts": 0,
            "worker_id": None,
            "lease_expires_at": None,
            "result": None,
            "error": None,
            "posted_message_id": None,
            "cancelled_by": None,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "updated_at": now,
        }
        values["id"] = job_id = s.scalar(_INSERT_JOB, values)
        balance = _sql.post_entry(
            s,
            account.id,
            -spec.cost,
            LedgerKind.RESERVE,
            f"reserve:{job_id}",
            now=now,
            job_id=job_id,
            actor_id=spec.user_id,
            reason=spec.kind,
            require_funds=True,
        )
        if balance < 0:  # only reachable if the balance changed under us (PostgreSQL)
            raise InsufficientCredits(spec.cost, account.balance)
        return _detached_job(values), True

    # cancel / fail / complete ----------------------------------------------------------------------------
    async def cancel(self, job_id: int, actor_id: int | None) -> bool:
        now = self.db.now()

        def unit(s: Session) -> bool:
            row = s.execute(
                select(jobs.c.status, jobs.c.user_id, jobs.c.start_tag, jobs.c.cost)
                .where(jobs.c.id == job_id)
                .with_for_update()
            ).first()
            if row is None or row.status not in ACTIVE_STATUSES:
                return False
            done = _finish(
                s,
                job_id,
                JobStatus.CANCELLED,
                now,
                {"cancelled_by": actor_id},
                actor_id=actor_id,
                reason="cancelled",
            )
            if done and row.status == QUEUED:
                # give the fair-share tag back if this was the user's latest job
                s.execute(
                    update(fair_share)
                    .where(
                        fair_share.c.user_id == row.user_id,
                        fair_share.c.finish_tag == row.start_tag + row.cost,
                    )
                    .values(finish_tag=row.start_tag)
                )
            return done

        return await self.db.run_write(unit)

    async def fail(self, job_id: int, error: str) -> bool:
        now = self.db.now()
        return await self.db.run_write(
            lambda s: _finish(s, job_id, JobStatus.FAILED, now, {"error": error[:4000]}, reason="failed")
        )

    async def complete(
        self,
        job_id: int,
        result: dict[str, Any],
        final_cost: int | None = None,
        *,
        images: Iterable[dict[str, Any]] = (),
        worker_id: str | None = None,
    ) -> bool:
        now = self.db.now()
        rows = builtins.list(images)

        def unit(s: Session) -> bool:
            if worker_id is not None:
                holder = s.execute(select(jobs.c.worker_id, jobs.c.status).where(jobs.c.id == job_id)).first()
                if holder is None or holder.status != RUNNING or holder.worker_id != worker_id:
                    return False
            done = _finish(s, job_id, JobStatus.DONE, now, {"result": result}, final_cost=final_cost, reason="completed")
            if done and rows:
                job = s.execute(select(jobs.c.guild_id, jobs.c.user_id).where(jobs.c.id == job_id)).one()
                s.execute(
                    _INSERT_IMAGE,
                    [
                        {"job_id": job_id, "owner_id": job.user_id, "guild_id": job.guild_id, "created_at": now,
                         "batch_index": 0, **row}
                        for row in rows
                    ],
                )  # fmt: skip
            return done

        return await self.db.run_write(unit)

    async def is_cancelled(self, job_id: int) -> bool:
        status = await self.db.run_read(lambda s: s.scalar(_STATUS, {"p_job_id": job_id}))
        return status == JobStatus.CANCELLED

    # workers ---------------------------------------------------------------------------------------------
    async def claim(self, worker_id: str, max_batch: int = 4, lease_s: float = 120) -> list[Job]:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        now = self.db.now()

        def unit(s: Session) -> list[Job]:
            head = s.execute(_CLAIM_HEAD).first()
            if head is None:
                return []
            ids = [head.id]
            if max_batch > 1:
                ids += s.scalars(
                    _CLAIM_MATES,
                    {"p_batch_key": head.batch_key, "p_head_id": head.id, "p_limit": max_batch - 1},
                ).all()
            params = {
                "p_ids": ids,
                "p_worker_id": worker_id,
                "p_lease": now + timedelta(seconds=lease_s),
                "p_now": now,
            }
            rows = s.execute(_CLAIM, params).all()
            s.execute(_ADVANCE_CLOCK, {"p_tag": head.start_tag})
            claimed = [_detached_job(row._mapping) for row in rows]
            claimed.sort(key=lambda j: (j.start_tag, j.id))
            return claimed

        return await self.db.run_write(unit)

    async def requeue_expired(
        self, max_attempts: int = 3, dead: Iterable[str] = ()
    ) -> tuple[list[Job], list[Job]]:
        now = self.db.now()
        named = builtins.list(dead)

        def unit(s: Session) -> tuple[list[Job], list[Job]]:
            requeued: list[int] = []
            failed: list[int] = []
            gone = builtins.list(
                s.scalars(
                    delete(workers)
                    .where(or_(workers.c.expires_at < now, workers.c.id.in_(named)))
                    .returning(workers.c.id)
                ).all()
            )
            expired = s.execute(
                select(jobs.c.id, jobs.c.attempts)
                .where(
                    jobs.c.status == RUNNING,
                    or_(jobs.c.lease_expires_at < now, jobs.c.worker_id.in_(sorted(set(gone) | set(named)))),
                )
                .order_by(jobs.c.id)
                .with_for_update(skip_locked=True)
            ).all()
            for job_id, attempts in expired:
                if attempts >= max_attempts:
                    error = f"the worker stopped responding {attempts} times; giving up"
                    if _finish(s, job_id, JobStatus.FAILED, now, {"error": error}, reason="lease expired"):
                        failed.append(job_id)
                    continue
                back = s.scalar(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == RUNNING)
                    .values(status=QUEUED, worker_id=None, lease_expires_at=None, updated_at=now)
                    .returning(jobs.c.id)
                )
                if back is not None:
                    requeued.append(job_id)
            if not requeued and not failed:
                return [], []
            loaded = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(requeued + failed)))}
            return [loaded[i] for i in requeued], [loaded[i] for i in failed]

        requeued, failed = await self.db.run_write(unit)
        if requeued or failed:
            log.warning("reaper: requeued %s, failed %s", [j.id for j in requeued], [j.id for j in failed])
        return requeued, failed

    async def release(self, job_ids: Iterable[int]) -> int:
        ids = builtins.list(job_ids)
        if not ids:
            return 0
        now = self.db.now()
        released = await self.db.run_write(
            lambda s: s.scalars(
                update(jobs)
                .where(jobs.c.id.in_(ids), jobs.c.status == RUNNING)
                .values(
                    status=QUEUED,
                    worker_id=None,
                    lease_expires_at=None,
                    attempts=case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
                    updated_at=now,
                )
                .returning(jobs.c.id)
            ).all()
        )
        return len(released)

    async def mark_posted(self, job_id: int, message_id: int) -> bool:
        now = self.db.now()
        params = {"p_job_id": job_id, "p_message_id": message_id, "p_now": now}
        hit = await self.db.run_write(lambda s: s.scalar(_MARK_POSTED, params))
        return hit is not None

    async def mark_answered(self, job_id: int) -> bool:
        params = {"p_job_id": job_id, "p_now": self.db.now()}
        return await self.db.run_write(lambda s: s.scalar(_MARK_ANSWERED, params)) is not None

    async def due_announcements(self, worker_id: str, limit: int = 20) -> builtins.list[Job]:
        now = self.db.now()
        live = select(workers.c.id).where(workers.c.expires_at >= now, workers.c.id != worker_id)

        def unit(s: Session) -> builtins.list[Job]:
            ids = s.scalars(
                select(jobs.c.id)
                .where(
                    jobs.c.status.in_((DONE, FAILED)),
                    jobs.c.answered_at.is_(None),
                    or_(jobs.c.next_announce_at.is_(None), jobs.c.next_announce_at <= now),
                    or_(jobs.c.worker_id.is_(None), jobs.c.worker_id.not_in(live)),
                )
                .order_by(jobs.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not ids:
                return []
            s.execute(update(jobs).where(jobs.c.id.in_(ids)).values(worker_id=worker_id))
            return builtins.list(s.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id)).all())

        return await self.db.run_write(unit)

    async def postpone_announcement(self, job_id: int, delay_s: float) -> int:
        params = {"p_id": job_id, "p_at": self.db.now() + timedelta(seconds=delay_s)}
        stmt = (
            update(jobs)
            .where(jobs.c.id == bindparam("p_id"))
            .values(announce_attempts=jobs.c.announce_attempts + 1, next_announce_at=bindparam("p_at"))
            .returning(jobs.c.announce_attempts)
        )
        return int(await self.db.run_write(lambda s: s.scalar(stmt, params)) or 0)

    async def refund_unposted(self, job_id: int, reason: str) -> bool:
        now = self.db.now()

        def unit(s: Session) -> bool:
            row = s.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == DONE, jobs.c.answered_at.is_(None))
                .values(status=FAILED, error=reason[:4000], announce_attempts=0, next_announce_at=None, updated_at=now)
                .returning(jobs.c.account_id)
            ).first()
            if row is None:
                return False
            charged = s.scalar(
                select(_sql.ledger.c.delta).where(_sql.ledger.c.idempotency_key == f"reserve:{job_id}")
            )
            settled = s.scalar(
                select(_sql.ledger.c.delta).where(_sql.ledger.c.idempotency_key == f"settle:{job_id}")
            )
            refund = -int(charged or 0) - int(settled or 0)
            _sql.post_entry(
                s, row.account_id, refund, LedgerKind.REFUND, f"refund:{job_id}", now=now, job_id=job_id,
                reason="result could not be posted",
            )  # fmt: skip
            s.execute(delete(images_table).where(images_table.c.job_id == job_id))
            return True

        return await self.db.run_write(unit)

    # the worker registry ---------------------------------------------------------------------------------
    async def register_worker(self, worker_id: str, *, kind: str, host: str, pid: int, lease_s: float) -> None:
        now = self.db.now()
        values = {"kind": kind, "host": host, "pid": pid, "heartbeat_at": now, "expires_at": now + timedelta(seconds=lease_s)}

        def unit(s: Session) -> None:
            s.execute(
                _sql.upsert(s, workers)
                .values(id=worker_id, started_at=now, **values)
                .on_conflict_do_update(index_elements=[workers.c.id], set_=values)
            )

        await self.db.run_write(unit)

    async def heartbeat(self, worker_id: str, lease_s: float) -> builtins.list[int] | None:
        now = self.db.now()
        params = {"p_worker_id": worker_id, "p_now": now, "p_lease": now + timedelta(seconds=lease_s)}

        def unit(s: Session) -> builtins.list[int] | None:
            if s.scalar(_HEARTBEAT, params) is None:
                return None
            return builtins.list(s.scalars(_RENEW_LEASES, params).all())

        return await self.db.run_write(unit)

    async def deregister_worker(self, worker_id: str) -> None:
        await self.db.run_write(lambda s: s.execute(delete(workers).where(workers.c.id == worker_id)))

    async def workers(self) -> builtins.list[WorkerRecord]:
        stmt = select(WorkerRecord).order_by(WorkerRecord.started_at, WorkerRecord.id)
        return await self.db.run_read(lambda s: builtins.list(s.scalars(stmt).all()))

    async def by_message(self, message_id: int) -> Job | None:
        stmt = select(Job).where(Job.posted_message_id == message_id).order_by(Job.id).limit(1)
        return await self.db.run_read(lambda s: s.scalar(stmt))

    # queries ---------------------------------------------------------------------------------------------
    async def get(self, job_id: int) -> Job | None:
        return await self.db.run_read(lambda s: s.get(Job, job_id))

    async def list(
        self,
        guild_id: int | None = None,
        user_id: int | None = None,
        statuses: Iterable[str] | None = ACTIVE_STATUSES,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs in fair order; ``statuses=None`` means all."""
        stmt = select(Job)
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        if user_id is not None:
            stmt = stmt.where(Job.user_id == user_id)
        if statuses is not None:
            stmt = stmt.where(Job.status.in_([str(x) for x in statuses]))
        stmt = stmt.order_by(Job.start_tag, Job.id).limit(limit)
        return await self.db.run_read(lambda s: builtins.list(s.scalars(stmt).all()))

    @staticmethod
    def _ahead(job_id: int, start_tag: int, guild_id: int) -> Any:
        """Queued jobs that a claim would take before this one (paused guilds other than its own excluded)."""
        return (
            jobs.c.status == QUEUED,
            tuple_(jobs.c.start_tag, jobs.c.id) < tuple_(start_tag, job_id),
            (jobs.c.guild_id == guild_id) | jobs.c.guild_id.not_in(_paused_guilds()),
        )

    async def position(self, job_id: int) -> int:
        def unit(s: Session) -> int:
            job = s.execute(
                select(jobs.c.status, jobs.c.start_tag, jobs.c.guild_id).where(jobs.c.id == job_id)
            ).first()
            if job is None or job.status != QUEUED:
                return 0
            ahead = s.scalar(
                select(func.count())
                .select_from(jobs)
                .where(*self._ahead(job_id, job.start_tag, job.guild_id))
            )
            return int(ahead or 0) + 1

        return await self.db.run_read(unit)

    async def eta(self, job_id: int, seconds_per_cost_unit: float) -> float:
        now = self.db.now()

        def remaining(cost: int, started: datetime | None) -> float:
            elapsed = (now - started).total_seconds() if started else 0.0
            return max(0.0, cost * seconds_per_cost_unit - elapsed)

        def unit(s: Session) -> float:
            job = s.execute(
                select(
                    jobs.c.status, jobs.c.start_tag, jobs.c.cost, jobs.c.guild_id, jobs.c.started_at
                ).where(jobs.c.id == job_id)
            ).first()
            if job is None or job.status not in ACTIVE_STATUSES:
                return 0.0
            if job.status == RUNNING:
                return remaining(job.cost, job.started_at)
            running = s.execute(select(jobs.c.cost, jobs.c.started_at).where(jobs.c.status == RUNNING)).all()
            ahead = s.scalar(
                select(func.coalesce(func.sum(jobs.c.cost), 0)).where(
                    *self._ahead(job_id, job.start_tag, job.guild_id)
                )
            )
            busy = sum(remaining(c, st) for c, st in running)
            return busy + (int(ahead or 0) + job.cost) * seconds_per_cost_unit

        return await self.db.run_read(unit)

    async def counts(self) -> dict[str, int]:
        rows = await self.db.run_read(
            lambda s: s.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)).all()
        )
        out = {st.value: 0 for st in JobStatus}
        out.update({status: int(n) for status, n in rows})
        return out

    # pause -----------------------------------------------------------------------------------------------
    async def pause(self, guild_id: int, actor_id: int | None = None) -> None:
        await self._set_paused(guild_id, True, actor_id)

    async def resume(self, guild_id: int, actor_id: int | None = None) -> None:
        await self._set_paused(guild_id, False, actor_id)

    async def _set_paused(self, guild_id: int, paused: bool, actor_id: int | None) -> None:
        now = self.db.now()

        def unit(s: Session) -> None:
            _sql.ensure_guild_settings(s, guild_id, now)
            s.execute(
                update(_sql.guild_settings)
                .where(_sql.guild_settings.c.guild_id == guild_id)
                .values(paused=paused, updated_by=actor_id, updated_at=now)
            )

        await self.db.run_write(unit)

    async def is_paused(self, guild_id: int) -> bool:
        gs = _sql.guild_settings
        paused = await self.db.run_read(
            lambda s: s.scalar(select(gs.c.paused).where(gs.c.guild_id == guild_id))
        )
        return bool(paused)


def _finish(
    s: Session,
    job_id: int,
    status: JobStatus,
    now: datetime,
    values: dict[str, Any],
    *,
    final_cost: int | None = None,
    actor_id: int | None = None,
    reason: str | None = None,
) -> bool:
    """Move an active job to a final status and post its settle (done) or refund (failed / cancelled).
    False, with nothing written, if the job is not active any more."""
    params = {"p_job_id": job_id, "p_status": status.value, "p_now": now, "p_result": None, "p_error": None}
    params["p_cancelled_by"] = None
    params["p_answered_at"] = now if status == JobStatus.CANCELLED else None  # the cancel's reply answers it
    params.update({f"p_{k}": v for k, v in values.items()})
    row = s.execute(_FINISH, params).first()
    if row is None:
        return False
    if status == JobStatus.DONE:
        charged = row.cost if final_cost is None else max(0, min(row.cost, final_cost))
        kind, key, delta = LedgerKind.SETTLE, f"settle:{job_id}", row.cost - charged
    else:
        kind, key, delta = LedgerKind.REFUND, f"refund:{job_id}", row.cost
    _sql.post_entry(
        s, row.account_id, delta, kind, key, now=now, job_id=job_id, actor_id=actor_id, reason=reason
    )
    return True
