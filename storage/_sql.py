"""Internal helpers shared by the repositories: portable upserts, account opening, ledger postings.

Every function here is synchronous and runs inside a caller's unit (``Database.run_write``); none commits.
All balance changes go through :func:`post_entry`, which updates the cached balance and appends the ledger
entry in the same transaction, so ``balance == sum(entries)`` holds after every commit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Insert, Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from storage.models import ACTIVE_STATUSES, Account, Guild, GuildSettings, Job, LedgerEntry, LedgerKind, User
from storage.policy import CostPolicy

accounts: Table = Account.__table__  # type: ignore[assignment]
ledger: Table = LedgerEntry.__table__  # type: ignore[assignment]
users: Table = User.__table__  # type: ignore[assignment]
guilds: Table = Guild.__table__  # type: ignore[assignment]
guild_settings: Table = GuildSettings.__table__  # type: ignore[assignment]
jobs: Table = Job.__table__  # type: ignore[assignment]

POLICY_KEY = "cost_policy"


def upsert(session: Session, table: Table) -> Insert:
    """``INSERT`` that supports ``on_conflict_do_nothing/do_update`` on SQLite and PostgreSQL."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise NotImplementedError(f"storage supports SQLite and PostgreSQL, not {name}")


def ensure_user(session: Session, user_id: int, now: datetime, name: str | None = None) -> None:
    stmt = upsert(session, users).values(id=user_id, name=name, created_at=now, updated_at=now)
    if name is None:
        stmt = stmt.on_conflict_do_nothing(index_elements=[users.c.id])
    else:
        stmt = stmt.on_conflict_do_update(index_elements=[users.c.id], set_={"name": name, "updated_at": now})
    session.execute(stmt)


def ensure_guild(session: Session, guild_id: int, now: datetime, name: str | None = None) -> None:
    stmt = upsert(session, guilds).values(id=guild_id, name=name, created_at=now, updated_at=now)
    if name is None:
        stmt = stmt.on_conflict_do_nothing(index_elements=[guilds.c.id])
    else:
        stmt = stmt.on_conflict_do_update(
            index_elements=[guilds.c.id], set_={"name": name, "updated_at": now}
        )
    session.execute(stmt)


def ensure_guild_settings(session: Session, guild_id: int, now: datetime) -> None:
    ensure_guild(session, guild_id, now)
    stmt = (
        upsert(session, guild_settings)
        .values(guild_id=guild_id, paused=False, settings={}, updated_at=now)
        .on_conflict_do_nothing(index_elements=[guild_settings.c.guild_id])
    )
    session.execute(stmt)


def policy_from_settings(base: CostPolicy, settings: dict[str, Any] | None) -> CostPolicy:
    """``base`` (the bot's) with a guild's overrides; its ``max_queued_per_user`` is also the guild's ceiling."""
    if not settings:
        return base
    policy = base.with_overrides(settings.get(POLICY_KEY))
    return dataclasses.replace(policy, max_queued_per_user=min(policy.max_queued_per_user, base.max_queued_per_user))


_GUILD_SETTINGS = select(guild_settings.c.settings).where(
    guild_settings.c.guild_id == bindparam("p_guild_id")
)


def load_policy(session: Session, guild_id: int, base: CostPolicy) -> CostPolicy:
    return policy_from_settings(base, session.scalar(_GUILD_SETTINGS, {"p_guild_id": guild_id}))


@dataclass
class AccountState:
    id: int
    guild_id: int
    user_id: int
    balance: int
    last_topup_at: datetime


_FIND_ACCOUNT = select(accounts.c.id, accounts.c.balance, accounts.c.last_topup_at).where(
    accounts.c.guild_id == bindparam("p_guild_id"), accounts.c.user_id == bindparam("p_user_id")
)


_FIND_ACCOUNT_FOR_UPDATE = _FIND_ACCOUNT.with_for_update()
_RESERVED = select(func.sum(jobs.c.cost)).where(
    jobs.c.account_id == bindparam("p_account_id"), jobs.c.status.in_(ACTIVE_STATUSES)
)


def find_account(session: Session, guild_id: int, user_id: int, *, lock: bool = False) -> AccountState | None:
    """The account, or None. ``lock`` takes a row lock on PostgreSQL (``FOR UPDATE``) so that concurrent units
    of one account serialise there; SQLite's write units are serialised already."""
    stmt = _FIND_ACCOUNT_FOR_UPDATE if lock else _FIND_ACCOUNT
    row = session.execute(stmt, {"p_guild_id": guild_id, "p_user_id": user_id}).first()
    if row is None:
        return None
    return AccountState(row.id, guild_id, user_id, row.balance, row.last_topup_at)


def reserved(session: Session, account_id: int) -> int:
    """Credits the account has reserved for jobs not finished yet (they come back if the jobs are refunded)."""
    return int(session.scalar(_RESERVED, {"p_account_id": account_id}) or 0)


def topup_due(session: Session, policy: CostPolicy, account: AccountState, now: datetime) -> bool:
    """A top-up lifts balance + reserved credits to the floor: credits a refund may bring back count, so a
    top-up while credits are reserved and a cancel after it never mint credits."""
    return (
        policy.topups_enabled
        and account.balance < policy.topup_floor
        and now >= account.last_topup_at + timedelta(seconds=policy.topup_period_s)
        and account.balance + reserved(session, account.id) < policy.topup_floor
    )


def open_account(
    session: Session, guild_id: int, user_id: int, policy: CostPolicy, now: datetime, *, lock: bool = True
) -> AccountState:
    """The account of ``user_id`` in ``guild_id``, created with the start balance (a ``start`` entry) if new
    and topped up to the floor (a ``topup`` entry) if a top-up is due."""
    account = find_account(session, guild_id, user_id, lock=lock)
    if account is None:
        ensure_guild(session, guild_id, now)
        ensure_user(session, user_id, now)
        account_id = session.scalar(
            upsert(session, accounts)
            .values(
                guild_id=guild_id,
                user_id=user_id,
                balance=0,
                last_topup_at=now,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[accounts.c.guild_id, accounts.c.user_id])
            .returning(accounts.c.id)
        )
        if account_id is None:  # opened concurrently by another transaction (PostgreSQL)
            account = find_account(session, guild_id, user_id, lock=lock)
            assert account is not None
        else:
            balance = post_entry(
                session,
                account_id,
                policy.start_balance,
                LedgerKind.START,
                f"start:{account_id}",
                now=now,
                reason="start balance",
            )
            account = AccountState(account_id, guild_id, user_id, balance, now)
    if topup_due(session, policy, account, now):
        apply_topup(session, account, policy, now)
    return account


def apply_topup(session: Session, account: AccountState, policy: CostPolicy, now: datetime) -> None:
    delta = policy.topup_floor - account.balance - reserved(session, account.id)
    # optimistic guard: only if nobody changed the balance or topped up since we read the account
    claimed = session.scalar(
        update(accounts)
        .where(
            accounts.c.id == account.id,
            accounts.c.balance == account.balance,
            accounts.c.last_topup_at == account.last_topup_at,
        )
        .values(last_topup_at=now)
        .returning(accounts.c.id)
    )
    if claimed is None:
        return
    account.balance = post_entry(
        session,
        account.id,
        delta,
        LedgerKind.TOPUP,
        f"topup:{account.id}:{now.isoformat()}",
        now=now,
        reason=f"periodic top-up to {policy.topup_floor}",
    )
    account.last_topup_at = now


_CREDIT = (
    update(accounts)
    .where(accounts.c.id == bindparam("p_account_id"))
    .values(balance=accounts.c.balance + bindparam("p_delta"), updated_at=bindparam("p_now"))
    .returning(accounts.c.balance)
)
_DEBIT_IF_FUNDED = (
    update(accounts)
    .where(accounts.c.id == bindparam("p_account_id"), accounts.c.balance + bindparam("p_delta") >= 0)
    .values(balance=accounts.c.balance + bindparam("p_delta"), updated_at=bindparam("p_now"))
    .returning(accounts.c.balance)
)
_INSERT_ENTRY = ledger.insert()


def post_entry(
    session: Session,
    account_id: int,
    delta: int,
    kind: LedgerKind | str,
    key: str,
    *,
    now: datetime,
    job_id: int | None = None,
    actor_id: int | None = None,
    reason: str | None = None,
    require_funds: bool = False,
) -> int:
    """Apply ``delta`` to the account and append the matching ledger entry; returns the new balance.
    With ``require_funds`` the update only happens if the balance stays >= 0 and ``-1`` is returned otherwise
    (nothing written). A duplicate ``key`` raises ``IntegrityError`` (the unique constraint is the last line of
    defence against double postings; callers check their own idempotency first)."""
    stmt = _DEBIT_IF_FUNDED if require_funds and delta < 0 else _CREDIT
    new_balance = session.scalar(stmt, {"p_account_id": account_id, "p_delta": delta, "p_now": now})
    if new_balance is None:
        if require_funds:
            return -1
        raise LookupError(f"account {account_id} does not exist")
    session.execute(
        _INSERT_ENTRY,
        {
            "account_id": account_id,
            "delta": delta,
            "balance_after": new_balance,
            "kind": str(kind),
            "idempotency_key": key,
            "job_id": job_id,
            "actor_id": actor_id,
            "reason": reason,
            "created_at": now,
        },
    )
    return int(new_balance)
