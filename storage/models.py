"""SQLAlchemy 2 ORM models. The schema is owned by the Alembic migrations in ``storage/migrations``;
``tests/test_storage_migrations.py`` checks that the two agree.

Conventions: Discord ids are ``BigInteger`` (64-bit); surrogate keys are integers that autoincrement on both
SQLite and PostgreSQL; timestamps are timezone-aware UTC; relationships are ``lazy="raise"`` so that nothing is
ever loaded implicitly under asyncio (use explicit selects).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# surrogate keys: BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite
IdType = BigInteger().with_variant(Integer(), "sqlite")
JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend. SQLite stores naive UTC text (which sorts and compares
    correctly as text); values read back get ``tzinfo=UTC``. Naive inputs are taken to be UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JobKind(enum.StrEnum):
    """What a job does; its parameters are typed per kind in ``worker.jobs``."""

    IMAGINE = "imagine"  # txt2img; img2img for its variation and upscale modes
    EDIT = "edit"  # Imagic: optimise on the input image, then sample
    EDIT_REMIX = "edit_remix"  # sample another η or seed from the tuned state of an edit
    OUTPAINT = "outpaint"
    INPAINT = "inpaint"
    MIX = "mix"  # several weighted prompts; a sweep renders one image per weight
    HYPERNET_TRAIN = "hypernet_train"  # train a hypernetwork module, then sample with it


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
FINAL_STATUSES = (JobStatus.DONE.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


class LedgerKind(enum.StrEnum):
    START = "start"
    RESERVE = "reserve"
    SETTLE = "settle"
    REFUND = "refund"
    GRANT = "grant"
    TAKE = "take"
    SET = "set"
    TOPUP = "topup"


class ModuleStatus(enum.StrEnum):
    """Review state of a hypernetwork module. Only ``approved`` modules with ``shared=True`` are visible to
    other members of the guild; the owner always sees their own."""

    PRIVATE = "private"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


def _quoted(values: Any) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonType}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Guild(Base):
    __tablename__ = "guilds"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class GuildSettings(Base):
    """Per-guild configuration. ``paused`` is typed because the queue filters on it; everything else
    (limits, policy overrides under ``"cost_policy"``, …) lives in the ``settings`` blob, whose schema is
    declared in ``services.settings``."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("guilds.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_by: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class ChannelSettings(Base):
    __tablename__ = "channel_settings"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("guilds.id", ondelete="CASCADE"), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_by: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class Account(Base):
    """Credits of one user in one guild. ``balance`` is a cache of the sum of the account's ledger entries,
    kept in the same transaction as every entry; :meth:`storage.Ledger.check_invariant` verifies it."""

    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("guild_id", "user_id", name="uq_accounts_guild_user"),
        CheckConstraint("balance >= 0", name="balance_not_negative"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("guilds.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    balance: Mapped[int] = mapped_column(BigInteger)
    last_topup_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    entries: Mapped[list[LedgerEntry]] = relationship(back_populates="account", lazy="raise")


class LedgerEntry(Base):
    """Append-only. ``idempotency_key`` is unique: ``reserve:<job>``, ``settle:<job>``, ``refund:<job>``,
    ``start:<account>``, ``topup:<account>:<timestamp>``, or a caller-supplied / random key for admin
    operations."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_quoted(LedgerKind)})", name="kind"),
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    account_id: Mapped[int] = mapped_column(IdType, ForeignKey("accounts.id", ondelete="CASCADE"))
    delta: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    job_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

    account: Mapped[Account] = relationship(back_populates="entries", lazy="raise")

    def __repr__(self) -> str:
        return f"<LedgerEntry {self.id} {self.kind} {self.delta:+d} -> {self.balance_after} key={self.idempotency_key}>"


class Job(Base):
    """A unit of GPU work. ``start_tag`` is the start-time-fair-queuing tag; claim order is
    ``(start_tag, id)``. ``cost`` credits were reserved at enqueue; exactly one of settle / refund follows."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_quoted(JobStatus)})", name="status"),
        Index("ix_jobs_status_start_tag_id", "status", "start_tag", "id"),
        Index("ix_jobs_user_id_status", "user_id", "status"),
        Index("ix_jobs_guild_id_status", "guild_id", "status"),
        Index("ix_jobs_status_model_guild_id", "status", "model", "guild_id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    guild_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("guilds.id", ondelete="CASCADE"))
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(IdType, ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # idempotency key of the request that created the job: a Discord interaction id, or a composite such as
    # "<interaction>:<n>" when one request makes several jobs, or "reaction:<message>:<user>:<nonce>"
    interaction_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    parent_job_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # JSON of the kind's typed parameters
    params_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    batch_key: Mapped[str] = mapped_column(String(255))
    # what a worker needs to run it: the model's name (config's [[models]]) and the pixel area of its images
    model: Mapped[str] = mapped_column(String(64), default="", server_default="")
    area: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cost: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    start_tag: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    posted_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    # the final answer (result, failure notice or DM) was delivered; a final job without it is announced,
    # by the worker that finished it or, once that worker is dead, by any live one (``jobs.worker_id``)
    answered_at: Mapped[datetime | None]
    announce_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_announce_at: Mapped[datetime | None]  # the next try after a failed one (backoff)
    cancelled_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]

    images: Mapped[list[Image]] = relationship(back_populates="job", lazy="raise")

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.status} user={self.user_id} cost={self.cost} tag={self.start_tag}>"


class WorkerRecord(Base):
    """A live worker process (the embedded one of a bot, or a remote ``python -m worker``): it renews
    ``expires_at`` with every heartbeat, and the leases of its running jobs with it. A worker whose row
    expired, or whose process is gone from its host, is dead: its jobs go back to the queue."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    # "embedded" (a bot's own worker), "remote" (``python -m worker``: claims, never posts) or "bot" (a bot
    # without a worker: it only posts results)
    kind: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    # what it serves (a "bot" serves nothing): the model, the largest image area, the job kinds it runs
    model: Mapped[str] = mapped_column(String(64), default="", server_default="")
    max_area: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    features: Mapped[list[str]] = mapped_column(JsonType, default=list)


class ServedModel(Base):
    """A model some worker has served, and what its last worker advertised: a model never seen here is refused,
    one whose workers are all down is queued with a note."""

    __tablename__ = "served_models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_area: Mapped[int] = mapped_column(Integer)
    features: Mapped[list[str]] = mapped_column(JsonType, default=list)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]


class JobProgress(Base):
    """The latest progress of a running job of a remote worker (the bot relays it to the requester)."""

    __tablename__ = "job_progress"

    job_id: Mapped[int] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(64), default="", server_default="")
    preview: Mapped[bytes | None] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime]


class FairShare(Base):
    """A member's finish tag of start-time fair queuing within one server (members share their server's turns)."""

    __tablename__ = "fair_share"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    finish_tag: Mapped[int] = mapped_column(BigInteger)


class GuildShare(Base):
    """A server's place in the fair order across servers: its ``pass`` (virtual time in thousandths of a
    credit, advanced by ``cost * 1000 / weight`` for each job it gets), its ``weight`` (config), and
    ``clock``, the virtual time of fair queuing among its own members."""

    __tablename__ = "guild_share"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    pass_: Mapped[int] = mapped_column("pass", BigInteger, default=0, server_default="0")
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    clock: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class QueueClock(Base):
    """Exactly one row (id=1, inserted by the initial migration): the virtual time across servers (the pass of
    the server served last)."""

    __tablename__ = "queue_clock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    virtual_now: Mapped[int] = mapped_column(BigInteger)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (Index("ix_images_guild_id_owner_id_id", "guild_id", "owner_id", "id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(IdType, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, index=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(200), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    batch_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]

    job: Mapped[Job | None] = relationship(back_populates="images", lazy="raise")


class Favourite(Base):
    __tablename__ = "favourites"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    image_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, autoincrement=False, index=True
    )
    created_at: Mapped[datetime]


class HypernetworkModule(Base):
    __tablename__ = "hypernetwork_modules"
    __table_args__ = (
        UniqueConstraint("guild_id", "name", name="uq_hypernetwork_modules_guild_name"),
        CheckConstraint(f"status IN ({_quoted(ModuleStatus)})", name="status"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("guilds.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(BigInteger, index=True)
    name: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    status: Mapped[str] = mapped_column(String(16), default=ModuleStatus.PRIVATE.value)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_guild_id_id", "guild_id", "id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    actor_id: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(64))
    target_user_id: Mapped[int | None] = mapped_column(BigInteger)
    target_job_id: Mapped[int | None] = mapped_column(IdType)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class Ban(Base):
    __tablename__ = "bans"

    guild_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("guilds.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False, index=True)
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class BannedWord(Base):
    __tablename__ = "banned_words"
    __table_args__ = (UniqueConstraint("guild_id", "word", name="uq_banned_words_guild_word"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("guilds.id", ondelete="CASCADE"))
    word: Mapped[str] = mapped_column(String(100))
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
