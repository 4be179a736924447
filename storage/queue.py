"""The durable, fair job queue.

``JobQueue`` is the interface the bot and the worker code against; calling ``JobQueue(db, policy)`` builds the
SQL implementation (:class:`SqlJobQueue`), which works on SQLite and PostgreSQL. A PostgreSQL + procrastinate
backend can subclass ``JobQueue`` later and be chosen the same way.

Fairness has two levels: servers first, then members within a server. Each server with queued work gets an
equal share of the GPUs (or its configured weight's share): a claim serves the server with the smallest ``pass``
(``guild_share``), whose pass then advances by ``cost * 1000 / weight`` — stride scheduling, on the credits the
jobs cost; a server that had nothing queued joins at the queue-wide virtual time (the pass of the server served
last), so idle time earns no credit. Within the server the claim takes its members' job with the smallest
``(start_tag, id)`` — start-time fair queuing on the server's own clock: a job's start tag is
``max(server_clock, member_finish)``, the member's finish tag then advances by the job's cost, and the server's
clock is the start tag of its last claimed job. A burst of twenty jobs from one member therefore gets tags 0, c,
2c, … while a newcomer's single job gets the server's clock and runs next; a server of one busy member and a
server of ten get the same share. A worker claims only what it can run (its ``Capability``: model, job kinds,
largest area); concurrent claims on PostgreSQL lock their rows with ``FOR UPDATE SKIP LOCKED``.

Credits: enqueue reserves the cost (``reserve:<job>``); completion settles it (``settle:<job>``, delta 0, or a
partial refund if the final cost is lower); failure, cancellation or exhausted retries refund it in full
(``refund:<job>``). Every state change is guarded by the job's current status inside one transaction, so each
of these happens at most once however often it is called.
"""

from __future__ import annotations

import abc
import builtins
import dataclasses
import heapq
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    String,
    Table,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
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
    GuildShare,
    Image,
    Job,
    JobProgress,
    JobStatus,
    LedgerKind,
    QueueClock,
    ServedModel,
    WorkerRecord,
)
from storage.policy import CostPolicy

log = logging.getLogger(__name__)

jobs: Table = Job.__table__  # type: ignore[assignment]
fair_share: Table = FairShare.__table__  # type: ignore[assignment]
queue_clock: Table = QueueClock.__table__  # type: ignore[assignment]
guild_share: Table = GuildShare.__table__  # type: ignore[assignment]
served_models: Table = ServedModel.__table__  # type: ignore[assignment]
job_progress: Table = JobProgress.__table__  # type: ignore[assignment]
workers: Table = WorkerRecord.__table__  # type: ignore[assignment]
images_table: Table = Image.__table__  # type: ignore[assignment]

QUEUED = JobStatus.QUEUED.value
RUNNING = JobStatus.RUNNING.value
DONE = JobStatus.DONE.value
FAILED = JobStatus.FAILED.value
PASS_UNIT = 1000  # a server's pass advances by cost * PASS_UNIT / weight per job it is served
NOTIFY_CHANNEL = "bot_jobs"  # PostgreSQL: "progress:<job>" and "final:<job>" are announced here on commit
WORK_CHANNEL = "worker_jobs"  # PostgreSQL: a queued job's model is announced here on commit (workers claim at once)
#: the kinds of workers that post results (a "remote" worker only runs jobs)
ANNOUNCER_KINDS = ("embedded", "bot")


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
    model: str = ""  # the model it runs on (a worker serving another never claims it)
    area: int = 0  # pixels of its largest image (a worker with a smaller max_area never claims it)


@dataclass(frozen=True)
class Capability:
    """What a worker can run, as it advertises it in the registry: one model, the job kinds it has handlers and
    features for (e.g. no training), and the largest image area its GPU holds."""

    model: str
    kinds: tuple[str, ...]
    max_area: int


@dataclass(frozen=True)
class ModelState:
    """A model as the registry knows it: whether a worker has ever served it here, and how many live now."""

    served: bool
    live_workers: int


@dataclass(frozen=True)
class ProgressReport:
    """The latest progress of a job of a remote worker, for the bot to relay."""

    job_id: int
    step: int
    total: int
    stage: str
    preview: bytes | None
    updated_at: datetime

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
    async def claim(
        self, worker_id: str, max_batch: int = 4, lease_s: float = 120, capability: Capability | None = None
    ) -> list[Job]:
        """Next job in fair order (servers, then members) plus up to ``max_batch - 1`` queued jobs with the same
        ``batch_key``; all become ``running`` with a lease and ``attempts + 1``. Skips paused guilds, and with a
        ``capability`` every job it cannot run. Empty list if idle."""

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
        if that worker still holds the job (or the job went back to the queue while the worker was cut off from the
        database, and nobody claimed it since: the finished result stands). False (and nothing changes) otherwise,
        or if the job was already done, failed or cancelled."""

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
    async def register_worker(
        self, worker_id: str, *, kind: str, host: str, pid: int, lease_s: float, capability: Capability | None = None
    ) -> None:
        """Add (or renew) a live worker: ``kind`` "embedded" (in a bot), "remote" or "bot" (posts, runs nothing),
        the ``host`` and ``pid`` of its process, what it can run (the model is recorded as served); it is live for
        ``lease_s`` unless it beats again."""

    @abc.abstractmethod
    async def model_states(self) -> dict[str, ModelState]:
        """The models some worker has ever served here, with their live workers now."""

    @abc.abstractmethod
    async def name_unnamed(self, model: str) -> int:
        """Jobs queued before models had names (revision 0005) run on ``model``; how many were named."""

    @abc.abstractmethod
    async def report_progress(
        self, job_ids: Iterable[int], step: int, total: int, stage: str = "", preview: bytes | None = None
    ) -> None:
        """A remote worker's progress on its running jobs (kept: the latest; announced on PostgreSQL)."""

    @abc.abstractmethod
    async def progress_of(self, job_ids: Iterable[int], since: datetime | None = None) -> builtins.list[ProgressReport]:
        """The latest progress of those of ``job_ids`` still running, reported after ``since``."""

    @abc.abstractmethod
    async def listen(
        self, callback: Callable[[str], None], channel: str = NOTIFY_CHANNEL
    ) -> Callable[[], Awaitable[None]] | None:
        """Call ``callback(payload)`` when a job finishes (``"final:<id>"``) or reports progress
        (``"progress:<id>"``), or on ``WORK_CHANNEL`` when a job is queued (its model): PostgreSQL's ``LISTEN``;
        returns what stops it, or None where there are no notifications (SQLite: poll)."""

    @abc.abstractmethod
    async def depth_by_guild(self) -> dict[int, dict[str, int]]:
        """Queued and running jobs per guild: ``{guild_id: {"queued": n, "running": n}}``."""

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
        """Done or failed jobs still unanswered whose next try is due and that are this worker's or belong to no
        live announcer (a remote worker's, or a dead worker's: they become this worker's) — for any age: a result
        found after a long outage is still announced."""

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


def _runnable(capability: Capability | None) -> tuple[Any, ...]:
    """Queued jobs of unpaused guilds that a worker of ``capability`` can run (any, without one)."""
    if capability is None:
        return _CLAIMABLE
    return (
        *_CLAIMABLE,
        jobs.c.model == capability.model,
        jobs.c.kind.in_(capability.kinds),
        jobs.c.area <= capability.max_area,
    )


def _claim_statements(capability: Capability | None) -> tuple[Any, Any]:
    """(servers with work, a server's next job) for a worker of ``capability``. The next job skips the jobs
    already picked for the batch and, for a batch mate, any of another batch group."""
    runnable = _runnable(capability)
    servers = (
        select(guild_share.c.guild_id, guild_share.c["pass"], guild_share.c.weight)
        .where(select(jobs.c.id).where(*runnable, jobs.c.guild_id == guild_share.c.guild_id).exists())
        .order_by(guild_share.c["pass"], guild_share.c.guild_id)
    )
    head = (
        select(jobs.c.id, jobs.c.batch_key, jobs.c.cost, jobs.c.start_tag)
        .where(
            *runnable,
            jobs.c.guild_id == bindparam("p_guild_id"),
            jobs.c.id.not_in(bindparam("p_picked", expanding=True)),
            or_(bindparam("p_any", type_=Boolean()), jobs.c.batch_key == bindparam("p_batch_key", type_=String())),
        )
        .order_by(jobs.c.start_tag, jobs.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return servers, head


_claim_cache: dict[Capability | None, tuple[Any, Any]] = {}
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
_SERVE_GUILD = (
    update(guild_share)
    .where(guild_share.c.guild_id == bindparam("p_guild_id"))
    .values(
        {
            "pass": guild_share.c["pass"] + bindparam("p_delta", type_=BigInteger()),
            "clock": case((guild_share.c.clock < bindparam("p_tag"), bindparam("p_tag")), else_=guild_share.c.clock),
        }
    )
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
_FINISH_RUNNING_ON = _FINISH.where(jobs.c.status == RUNNING, jobs.c.worker_id == bindparam("p_worker_id"))
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


def _fair_share_upserts_of(s: Session) -> tuple[Any, Any]:
    """The two upserts of an enqueue (built once per dialect): the server joins the fair order across servers
    (``pass = max(pass, virtual_now)``, its weight from config) and returns its clock; then the member's
    ``start = max(server_clock, member_finish)``, ``member_finish = start + cost``, returning the finish tag."""
    dialect = s.get_bind().dialect.name
    stmts = _fair_share_upserts.get(dialect)
    if stmts is None:
        virtual_now = select(queue_clock.c.virtual_now).where(queue_clock.c.id == 1).scalar_subquery()
        server = (
            _sql.upsert(s, guild_share)
            .values({"guild_id": bindparam("p_guild_id"), "pass": virtual_now, "weight": bindparam("p_weight"), "clock": 0})
            .on_conflict_do_update(
                index_elements=[guild_share.c.guild_id],
                set_={
                    "pass": case((guild_share.c["pass"] < virtual_now, virtual_now), else_=guild_share.c["pass"]),
                    "weight": bindparam("p_weight"),
                },
            )
            .returning(guild_share.c.clock)
        )
        clock = bindparam("p_clock", type_=BigInteger())
        later = case((fair_share.c.finish_tag > clock, fair_share.c.finish_tag), else_=clock)
        cost = bindparam("p_cost", type_=BigInteger())
        member = (
            _sql.upsert(s, fair_share)
            .values(guild_id=bindparam("p_guild_id"), user_id=bindparam("p_user_id"), finish_tag=clock + cost)
            .on_conflict_do_update(
                index_elements=[fair_share.c.guild_id, fair_share.c.user_id], set_={"finish_tag": later + cost}
            )
            .returning(fair_share.c.finish_tag)
        )
        stmts = _fair_share_upserts[dialect] = (server, member)
    return stmts


def _notify(s: Session, payload: str, channel: str = NOTIFY_CHANNEL) -> None:
    """PostgreSQL: tell listeners (the bot; workers on ``WORK_CHANNEL``) ``payload`` when this transaction
    commits. SQLite: they poll."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})


def _detached_job(values: Any) -> Job:
    """A ``Job`` built from a full row, in the detached state (as if loaded by a session that has closed)."""
    job = Job(**dict(values))
    make_transient_to_detached(job)
    return job


class SqlJobQueue(JobQueue):
    """The queue on SQLite or PostgreSQL. Each method is one transaction (``Database.run_write`` /
    ``run_read``); every state change is conditional on the job's current status, so concurrent or repeated
    calls cannot double-charge, double-refund or double-claim."""

    def __init__(
        self, db: Database, policy: CostPolicy | None = None, guild_weights: dict[int, float] | None = None
    ) -> None:
        self.db = db
        self.policy = policy or CostPolicy()
        #: a server's share of the GPUs relative to the others (default 1), from config
        self.guild_weights = dict(guild_weights or {})
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
        server, member = _fair_share_upserts_of(s)
        weight = float(self.guild_weights.get(spec.guild_id, 1.0))
        clock = s.scalar(server, {"p_guild_id": spec.guild_id, "p_weight": weight})
        finish_tag = s.scalar(
            member, {"p_guild_id": spec.guild_id, "p_user_id": spec.user_id, "p_clock": clock, "p_cost": spec.cost}
        )
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
            "model": spec.model,
            "area": spec.area,
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
        _notify(s, spec.model, WORK_CHANNEL)
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
                select(jobs.c.status, jobs.c.guild_id, jobs.c.user_id, jobs.c.start_tag, jobs.c.cost)
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
                        fair_share.c.guild_id == row.guild_id,
                        fair_share.c.user_id == row.user_id,
                        fair_share.c.finish_tag == row.start_tag + row.cost,
                    )
                    .values(finish_tag=row.start_tag)
                )
            return done

        return await self.db.run_write(unit)

    async def fail(self, job_id: int, error: str) -> bool:
        now = self.db.now()

        def unit(s: Session) -> bool:
            done = _finish(s, job_id, JobStatus.FAILED, now, {"error": error[:4000]}, reason="failed")
            if done:
                _notify(s, f"final:{job_id}")
            return done

        return await self.db.run_write(unit)

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

        def finish(s: Session, running_on: str | None) -> bool:
            return _finish(s, job_id, JobStatus.DONE, now, {"result": result}, final_cost=final_cost,
                           reason="completed", worker_id=running_on)  # fmt: skip

        def unit(s: Session) -> bool:
            done = finish(s, worker_id)  # the usual case, one statement: the job still runs on this worker
            if not done and worker_id is not None:
                # re-queued while this worker was cut off, and not claimed again: its result stands
                requeued = s.execute(
                    update(jobs).where(jobs.c.id == job_id, jobs.c.status == QUEUED)
                    .values(worker_id=worker_id).returning(jobs.c.id)
                ).first()  # fmt: skip
                done = requeued is not None and finish(s, None)
            if done:
                _notify(s, f"final:{job_id}")
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
    async def claim(
        self, worker_id: str, max_batch: int = 4, lease_s: float = 120, capability: Capability | None = None
    ) -> list[Job]:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        now = self.db.now()
        if capability not in _claim_cache:
            _claim_cache[capability] = _claim_statements(capability)
        servers, next_of = _claim_cache[capability]

        def unit(s: Session) -> list[Job]:
            # the fair order, followed pick by pick: the server of the smallest pass gives its next job, its pass
            # advances, and so on; after the head, only jobs of the head's batch group join the batch
            turns = [(int(p), g, float(w)) for g, p, w in s.execute(servers).all()]
            heapq.heapify(turns)
            weights = {g: w for _, g, w in turns}
            picked: list[Any] = []
            served: dict[int, list[Any]] = {}
            head_pass = 0
            while turns and len(picked) < max_batch:
                pass_, guild_id, weight = heapq.heappop(turns)
                params = {
                    "p_guild_id": guild_id, "p_picked": [j.id for j in picked],
                    "p_any": not picked, "p_batch_key": picked[0].batch_key if picked else "",
                }  # fmt: skip
                job = s.execute(next_of, params).first()
                if job is None:  # nothing (else) here for this batch, or taken by a concurrent claim
                    continue
                if not picked:
                    head_pass = pass_
                picked.append(job)
                served.setdefault(guild_id, []).append(job)
                heapq.heappush(turns, (pass_ + round(PASS_UNIT * job.cost / max(weight, 1e-6)), guild_id, weight))
            if not picked:
                return []
            params = {"p_ids": [j.id for j in picked], "p_worker_id": worker_id, "p_lease": now + timedelta(seconds=lease_s), "p_now": now}
            claimed = {row.id: _detached_job(row._mapping) for row in s.execute(_CLAIM, params).all()}
            for guild_id in sorted(served):  # one lock order for every claimer: no deadlock between them
                got = served[guild_id]
                delta = sum(round(PASS_UNIT * j.cost / max(weights[guild_id], 1e-6)) for j in got)
                s.execute(_SERVE_GUILD, {"p_guild_id": guild_id, "p_delta": delta, "p_tag": max(j.start_tag for j in got)})
            # virtual time across servers: the pass the head's server was served at (locked last, as by everyone)
            s.execute(_ADVANCE_CLOCK, {"p_tag": head_pass})
            return [claimed[j.id] for j in picked if j.id in claimed]

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
        live = select(workers.c.id).where(
            workers.c.expires_at >= now, workers.c.id != worker_id, workers.c.kind.in_(ANNOUNCER_KINDS)
        )

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
    async def register_worker(
        self, worker_id: str, *, kind: str, host: str, pid: int, lease_s: float, capability: Capability | None = None
    ) -> None:
        now = self.db.now()
        serves: dict[str, Any] = {"model": "", "max_area": 0, "features": []}
        if capability is not None:
            serves = {"model": capability.model, "max_area": capability.max_area, "features": builtins.list(capability.kinds)}
        values = {
            "kind": kind, "host": host, "pid": pid, "heartbeat_at": now, "expires_at": now + timedelta(seconds=lease_s), **serves,
        }  # fmt: skip

        def unit(s: Session) -> None:
            s.execute(
                _sql.upsert(s, workers)
                .values(id=worker_id, started_at=now, **values)
                .on_conflict_do_update(index_elements=[workers.c.id], set_=values)
            )
            if capability is not None:
                advert = {"max_area": capability.max_area, "features": serves["features"], "last_seen": now}
                s.execute(
                    _sql.upsert(s, served_models)
                    .values(name=capability.model, first_seen=now, **advert)
                    .on_conflict_do_update(index_elements=[served_models.c.name], set_=advert)
                )

        await self.db.run_write(unit)

    async def model_states(self) -> dict[str, ModelState]:
        now = self.db.now()
        live = (
            select(workers.c.model, func.count())
            .where(workers.c.expires_at >= now, workers.c.model != "")
            .group_by(workers.c.model)
        )

        def unit(s: Session) -> dict[str, ModelState]:
            counts = {model: int(n) for model, n in s.execute(live).all()}
            return {name: ModelState(True, counts.get(name, 0)) for name in s.scalars(select(served_models.c.name))}

        return await self.db.run_read(unit)

    async def name_unnamed(self, model: str) -> int:
        stmt = update(jobs).where(jobs.c.model == "", jobs.c.status.in_(ACTIVE_STATUSES)).values(model=model)
        return await self.db.run_write(lambda s: s.execute(stmt).rowcount)

    async def report_progress(
        self, job_ids: Iterable[int], step: int, total: int, stage: str = "", preview: bytes | None = None
    ) -> None:
        now = self.db.now()
        rows = [
            {"job_id": i, "step": step, "total": total, "stage": stage[:64], "preview": preview, "updated_at": now}
            for i in job_ids
        ]
        if not rows:
            return

        def unit(s: Session) -> None:
            stmt = _sql.upsert(s, job_progress)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[job_progress.c.job_id],
                    set_={c: stmt.excluded[c] for c in ("step", "total", "stage", "preview", "updated_at")},
                ),
                rows,
            )
            for row in rows:
                _notify(s, f"progress:{row['job_id']}")

        await self.db.run_write(unit)

    async def progress_of(self, job_ids: Iterable[int], since: datetime | None = None) -> builtins.list[ProgressReport]:
        ids = builtins.list(job_ids)
        if not ids:
            return []
        stmt = (
            select(job_progress)
            .join(jobs, jobs.c.id == job_progress.c.job_id)
            .where(job_progress.c.job_id.in_(ids), jobs.c.status == RUNNING)
            .order_by(job_progress.c.job_id)
        )
        if since is not None:
            stmt = stmt.where(job_progress.c.updated_at > since)
        rows = await self.db.run_read(lambda s: s.execute(stmt).all())
        return [ProgressReport(**row._mapping) for row in rows]

    async def listen(
        self, callback: Callable[[str], None], channel: str = NOTIFY_CHANNEL
    ) -> Callable[[], Awaitable[None]] | None:
        return await self.db.listen(channel, callback)

    async def depth_by_guild(self) -> dict[int, dict[str, int]]:
        stmt = (
            select(jobs.c.guild_id, jobs.c.status, func.count())
            .where(jobs.c.status.in_(ACTIVE_STATUSES))
            .group_by(jobs.c.guild_id, jobs.c.status)
        )
        depth: dict[int, dict[str, int]] = {}
        for guild_id, status, n in await self.db.run_read(lambda s: s.execute(stmt).all()):
            depth.setdefault(guild_id, {QUEUED: 0, RUNNING: 0})[status] = int(n)
        return depth

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
    def _ahead(s: Session, job: Any) -> tuple[int, float]:
        """(jobs, credits) that claims take before ``job`` (queued): its server's jobs ahead of it in its members'
        fair order, and from each other server with queued work what the fair order across servers gives it
        meanwhile — the credits it is served until ``job``'s server's pass reaches ``job``'s turn."""
        own_jobs, own_cost = s.execute(
            select(func.count(), func.coalesce(func.sum(jobs.c.cost), 0)).where(
                jobs.c.status == QUEUED,
                jobs.c.guild_id == job.guild_id,
                tuple_(jobs.c.start_tag, jobs.c.id) < tuple_(job.start_tag, job.id),
            )
        ).one()
        share = s.execute(select(guild_share.c["pass"], guild_share.c.weight).where(guild_share.c.guild_id == job.guild_id)).first()
        turn = (share[0] if share else 0) + PASS_UNIT * int(own_cost) / (share.weight if share else 1.0)
        others = s.execute(
            select(func.count(), func.sum(jobs.c.cost), guild_share.c["pass"], guild_share.c.weight)
            .join(guild_share, guild_share.c.guild_id == jobs.c.guild_id)
            .where(*_CLAIMABLE, jobs.c.guild_id != job.guild_id)
            .group_by(jobs.c.guild_id, guild_share.c["pass"], guild_share.c.weight)
        ).all()
        n, cost = int(own_jobs), float(own_cost)
        for count, total, pass_, weight in others:
            served = min(float(total), max(0.0, (turn - pass_) * weight / PASS_UNIT))
            n += math.ceil(count * served / total) if total else 0
            cost += served
        return n, cost

    async def position(self, job_id: int) -> int:
        def unit(s: Session) -> int:
            job = s.execute(select(jobs.c.id, jobs.c.status, jobs.c.start_tag, jobs.c.guild_id).where(jobs.c.id == job_id)).first()
            if job is None or job.status != QUEUED:
                return 0
            return self._ahead(s, job)[0] + 1

        return await self.db.run_read(unit)

    async def eta(self, job_id: int, seconds_per_cost_unit: float) -> float:
        now = self.db.now()

        def remaining(cost: int, started: datetime | None) -> float:
            elapsed = (now - started).total_seconds() if started else 0.0
            return max(0.0, cost * seconds_per_cost_unit - elapsed)

        def unit(s: Session) -> float:
            job = s.execute(
                select(
                    jobs.c.id, jobs.c.status, jobs.c.start_tag, jobs.c.cost, jobs.c.guild_id, jobs.c.started_at
                ).where(jobs.c.id == job_id)
            ).first()
            if job is None or job.status not in ACTIVE_STATUSES:
                return 0.0
            if job.status == RUNNING:
                return remaining(job.cost, job.started_at)
            running = s.execute(select(jobs.c.cost, jobs.c.started_at).where(jobs.c.status == RUNNING)).all()
            busy = sum(remaining(c, st) for c, st in running)
            return busy + (self._ahead(s, job)[1] + job.cost) * seconds_per_cost_unit

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
    worker_id: str | None = None,
) -> bool:
    """Move an active job to a final status and post its settle (done) or refund (failed / cancelled).
    False, with nothing written, if the job is not active any more (or, given ``worker_id``, not running
    on that worker)."""
    params = {"p_job_id": job_id, "p_status": status.value, "p_now": now, "p_result": None, "p_error": None}
    params["p_cancelled_by"] = None
    params["p_answered_at"] = now if status == JobStatus.CANCELLED else None  # the cancel's reply answers it
    params.update({f"p_{k}": v for k, v in values.items()})
    if worker_id is not None:
        params["p_worker_id"] = worker_id
    row = s.execute(_FINISH if worker_id is None else _FINISH_RUNNING_ON, params).first()
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
