"""storage — everything that must survive a crash: SQL models and migrations, the credit ledger, the durable
fair job queue, image files. SQLAlchemy 2 async; SQLite (WAL) embedded or PostgreSQL, with the same code.
Knows nothing of Discord, torch or gen_core.

Database
--------
::

    from storage import Database
    db = Database("sqlite+aiosqlite:///data/bot.db")   # folder created; or postgresql+asyncpg://…
    await db.upgrade()                  # alembic upgrade head (also: python -m storage upgrade URL)
    async with db.write() as s: ...     # AsyncSession, BEGIN IMMEDIATE on SQLite, committed on exit
    async with db.read() as s: ...      # AsyncSession, deferred snapshot
    await db.run_write(fn) / await db.run_read(fn)   # fn(sync Session) -> T, one transaction, run whole
    await db.downgrade("base"); await db.current_revision(); db.now(); await db.close()

The repositories below use ``run_write``/``run_read``: on SQLite each transaction runs whole on a dedicated
writer thread (sync pysqlite) — one thread hop per transaction instead of one per statement through aiosqlite,
4x the throughput — and through ``AsyncSession.run_sync`` on other backends (PostgreSQL via asyncpg; the same
code, tested). ``Database(url, sqlite_threads=False)`` uses ``run_sync`` on SQLite too. SQLite connections get
WAL, ``synchronous=NORMAL``, ``busy_timeout`` and foreign keys; write transactions begin with
``BEGIN IMMEDIATE`` and, within one process, wait for each other on an ``asyncio.Lock``.

``db.clock`` (a callable returning an aware UTC datetime) is the only source of time: leases, top-ups and
timestamps all use it, so tests can move time forward. Never nest write units (one would wait for the other).
Use a ``Database`` from one event loop. Returned ORM objects are detached and fully loaded
(``expire_on_commit=False``); relationships are ``lazy="raise"`` — select what you need.

Credits
-------
::

    policy = CostPolicy(start_balance=100, topup_floor=50, topup_period_s=86400, base=4.0,
                        multipliers={"imagine": 1.0, ...}, max_queued_per_user=8)
    compute_cost(kind, width, height, steps, count=1, strength=None, policy=policy) -> int   # >= 1
    ledger = Ledger(db, policy)
    await ledger.balance(guild_id, user_id) -> int         # opens the account ('start'), applies due 'topup'
    await ledger.grant(guild_id, user_id, amount, actor_id, reason=None, idempotency_key=None) -> int
    await ledger.take(...) -> int                           # never below zero
    await ledger.set_balance(guild_id, user_id, amount, actor_id, reason=None, idempotency_key=None) -> int
    await ledger.entries(guild_id, user_id, limit=10, offset=0) -> list[LedgerEntry]   # newest first
    await ledger.next_topup(guild_id, user_id) -> datetime | None
    await ledger.policy_for(guild_id) -> CostPolicy         # with the guild's overrides
    await ledger.check_invariant() -> list[str]             # empty when the books balance

Balances are per user per guild. A guild overrides policy fields with
``await settings.set_guild_policy(db, guild_id, actor_id, start_balance=…, multipliers={...})``; a guild's
``max_queued_per_user`` never exceeds the bot-wide policy's.

Queue
-----
::

    queue = JobQueue(db, policy)                            # -> SqlJobQueue; JobQueue is the interface (ABC)
    job, created = await queue.enqueue(JobSpec(kind="imagine", guild_id=…, channel_id=…, user_id=…,
                                               interaction_id=…, params={...}, batch_key="…", cost=n))
        # one transaction: job row (idempotent on interaction_id), 'reserve:<job>' entry, fair-share tag.
        # interaction_id: the request's idempotency key, int or str (<= 200 chars, e.g. "<interaction>:<n>"
        # when one request makes several jobs); stored and returned as str.
        # raises InsufficientCredits(cost, balance) / QueueFull(limit) with nothing written
    queue = JobQueue(db, policy, guild_weights={guild_id: 2.0})  # a server's share across servers (default 1)
    batch = await queue.claim(worker_id, max_batch=4, lease_s=120, capability=Capability(model, kinds, max_area))
        # -> list[Job]: fair order (servers by stride pass, then members by start tag on the server's clock), pick
        # by pick; mates share the head's batch_key; only jobs the capability can run (None: any)
    await queue.model_states() -> {name: ModelState(served, live_workers)}; await queue.name_unnamed(model)
    await queue.report_progress(job_ids, step, total, stage, preview_png); await queue.progress_of(ids, since)
    await queue.listen(callback) -> stop | None   # PostgreSQL NOTIFY "final:<id>" / "progress:<id>"; SQLite: None
    await queue.listen(callback, WORK_CHANNEL)    # a queued job's model (workers claim at once instead of polling)
    await queue.depth_by_guild() -> {guild_id: {"queued": n, "running": n}}
    await queue.complete(job_id, result, final_cost=None, images=(), worker_id=None) -> bool
        # 'settle:<job>' (0, or partial refund) and the image records in one transaction; with worker_id only
        # while that worker holds the job
    await queue.fail(job_id, error) -> bool                       # 'refund:<job>' exactly once
    await queue.cancel(job_id, actor_id) -> bool                  # queued or running; refund
    await queue.is_cancelled(job_id) -> bool                      # the worker is told at once (Worker.request_cancel)
    await queue.requeue_expired(max_attempts=3, dead=()) -> (requeued: list[Job], failed: list[Job])  # reaper:
        # expired leases, expired workers and the workers named dead (their process is gone) lose their jobs
    await queue.release(job_ids) -> int                           # shutdown: running -> queued, attempt undone
    # the worker registry: a worker lives while it beats; its running jobs' leases are renewed with it
    await queue.register_worker(worker_id, kind="embedded"|"remote"|"bot", host=…, pid=…, lease_s=…, capability=None)
    await queue.heartbeat(worker_id, lease_s) -> list[int] | None # jobs it still holds; None: re-register
    await queue.deregister_worker(worker_id); await queue.workers() -> list[WorkerRecord]
    # announcements: every done or failed job gets exactly one final answer, at any delay
    await queue.mark_posted(job_id, message_id) -> bool           # result posted (answered); True only once
    await queue.mark_answered(job_id) -> bool                     # failure notice / DM delivered (or impossible)
    await queue.due_announcements(worker_id, limit=20) -> list[Job]  # its own, or adopted from dead workers
    await queue.postpone_announcement(job_id, delay_s) -> int     # a try failed: back off; failed tries so far
    await queue.refund_unposted(job_id, reason) -> bool           # done but unpostable: failed + refunded
    await queue.by_message(message_id) -> Job | None              # reactions on a posted result
    await queue.get(job_id) -> Job | None
    await queue.list(guild_id=None, user_id=None, statuses=("queued", "running"), limit=100) -> list[Job]
    await queue.position(job_id) -> int                           # 1 = next; 0 = not queued
    await queue.eta(job_id, seconds_per_cost_unit) -> float
    await queue.pause(guild_id, actor_id=None); await queue.resume(...); await queue.is_paused(guild_id)
    await queue.counts() -> {"queued": n, "running": n, ...}
    queue.images                                                  # ImageRepo(db), see below

``Job`` fields: id, kind (a ``JobKind`` value), guild_id, channel_id, user_id, account_id, interaction_id,
parent_job_id, params (JSON; typed per kind in ``worker.jobs``), params_version, batch_key, cost, status (a
``JobStatus`` value), start_tag, attempts, worker_id, lease_expires_at, result, error, posted_message_id,
answered_at, announce_attempts, next_announce_at, cancelled_by, created_at, started_at, finished_at, updated_at.

Images
------
::

    store = ImageStore(root_dir)          # -> LocalImageStore; ImageStore is the interface
    store = open_image_store("s3://bucket/prefix", endpoint=, region=, access_key_id=, secret_access_key=)
                                          # -> S3ImageStore (a folder's path -> LocalImageStore)
    key = await store.put(png_bytes)      # "ab/<sha256>.png", atomic, stored once
    data = await store.get(key); await store.exists(key); await store.delete(key)
    async for found in store.objects(): ...; await store.remove(found)   # StoredObject: name, size, modified
    await store.lookup(keys)              # [StoredObject] of the keys stored (sizes without reading them)
    local_store.path(key)                 # the file (LocalImageStore only)
    from storage import images as images_repo
    await images_repo.record(db, job_id, owner_id, guild_id, key, width, height, seed, params, batch_index=0)
    await images_repo.get(db, image_id); await images_repo.for_job(db, job_id)
    await images_repo.history(db, guild_id, user_id, limit=20, offset=0)
    await images_repo.add_favourite(db, user_id, image_id) / remove_favourite(...)
    await images_repo.favourite_key(db, guild_id, user_id, key)  # newest image of the guild with that key
    await images_repo.list_favourites(db, user_id, guild_id=None, limit=20, offset=0)
    repo = ImageRepo(db)   # the same, bound: repo.record(job_id=, guild_id=, user_id=, key=, width=, height=,
                           # seed=, params=, batch_index=0), repo.history(...), repo.favourite(guild, user, key),
                           # repo.add_favourite, repo.remove_favourite, repo.favourites, repo.get, repo.for_job

Other repositories (module functions taking ``db``)
---------------------------------------------------
* ``storage.settings``: touch_user, touch_guild, get_guild_settings, update_guild_settings, set_guild_policy,
  policy_of, guild_policy, get_channel_settings, update_channel_settings (``WrongGuild`` for another server's
  channel), guild_channel_settings.
* ``storage.moderation``: audit, audit_entries, ban, unban, get_ban, is_banned, add_banned_word,
  remove_banned_word, banned_words, bans.
* ``storage.modules``: register, get, get_by_id, visible, list_all, update, delete, path_in_use (hypernetworks,
  LoRAs and embeddings, by ``ModuleKind``).
* ``storage.gc``: collect (image-store blobs no image row and no job refers to, and with ``keep_since`` the
  retention policy; run at start and periodically), discard (given keys nobody refers to), usage (disk use); on any store.
* ``storage.members``: forget (a member's data in a guild; ``FORMER_MEMBER`` owns the shared modules they leave).
"""

from storage import gc, images, members, moderation, modules, settings
from storage.db import Database, is_unavailable, masked_url, utcnow
from storage.errors import InsufficientCredits, QueueFull, StorageError, WrongGuild
from storage.image_store import ImageStore, LocalImageStore, S3ImageStore, StoredObject, open_image_store
from storage.images import ImageRepo
from storage.ledger import Ledger
from storage.models import (
    Account,
    AuditEntry,
    Ban,
    BannedWord,
    ChannelSettings,
    Favourite,
    Guild,
    GuildSettings,
    Image,
    Job,
    JobKind,
    JobStatus,
    LedgerEntry,
    LedgerKind,
    Module,
    ModuleKind,
    ModuleStatus,
    User,
    WorkerRecord,
)
from storage.policy import CostPolicy, compute_cost, denoised_steps
from storage.queue import (
    NOTIFY_CHANNEL,
    WORK_CHANNEL,
    Capability,
    JobQueue,
    JobSpec,
    ModelState,
    ProgressReport,
    SqlJobQueue,
)

__all__ = [
    "NOTIFY_CHANNEL",
    "WORK_CHANNEL",
    "Account",
    "Capability",
    "AuditEntry",
    "Ban",
    "BannedWord",
    "ChannelSettings",
    "CostPolicy",
    "Database",
    "Favourite",
    "Guild",
    "GuildSettings",
    "Module",
    "ModuleKind",
    "Image",
    "ImageRepo",
    "ImageStore",
    "InsufficientCredits",
    "Job",
    "JobQueue",
    "JobKind",
    "JobSpec",
    "JobStatus",
    "Ledger",
    "LedgerEntry",
    "LedgerKind",
    "LocalImageStore",
    "S3ImageStore",
    "StoredObject",
    "open_image_store",
    "ModelState",
    "ModuleStatus",
    "ProgressReport",
    "QueueFull",
    "SqlJobQueue",
    "StorageError",
    "User",
    "WorkerRecord",
    "WrongGuild",
    "compute_cost",
    "denoised_steps",
    "gc",
    "images",
    "is_unavailable",
    "masked_url",
    "members",
    "moderation",
    "modules",
    "settings",
    "utcnow",
]
