"""The credit ledger: one account per user per guild, an append-only list of entries, a cached balance.

Every change is an entry (``start``, ``reserve``, ``settle``, ``refund``, ``grant``, ``take``, ``set``,
``topup``) with a unique idempotency key, written in the same transaction as the balance it changes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import _sql
from storage.db import Database
from storage.models import ACTIVE_STATUSES, Account, Job, JobStatus, LedgerEntry, LedgerKind
from storage.policy import CostPolicy

log = logging.getLogger(__name__)


class Ledger:
    def __init__(self, db: Database, policy: CostPolicy | None = None) -> None:
        self.db = db
        self.policy = policy or CostPolicy()

    async def policy_for(self, guild_id: int) -> CostPolicy:
        """The bot-wide policy with the guild's overrides applied."""
        return await self.db.run_read(lambda s: _sql.load_policy(s, guild_id, self.policy))

    async def balance(self, guild_id: int, user_id: int) -> int:
        """Current balance. Opens the account with the start balance if new and applies a due top-up (both
        as ledger entries); otherwise a pure read."""
        now = self.db.now()

        def peek(s: Session) -> int | None:
            account = _sql.find_account(s, guild_id, user_id)
            if account is None or _sql.topup_due(s, _sql.load_policy(s, guild_id, self.policy), account, now):
                return None
            return account.balance

        balance = await self.db.run_read(peek)
        if balance is not None:
            return balance

        def open_(s: Session) -> int:
            policy = _sql.load_policy(s, guild_id, self.policy)
            return _sql.open_account(s, guild_id, user_id, policy, now).balance

        return await self.db.run_write(open_)

    async def grant(
        self,
        guild_id: int,
        user_id: int,
        amount: int,
        actor_id: int | None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Add ``amount`` (> 0) credits; returns the new balance. A repeated ``idempotency_key`` is a no-op."""
        if amount <= 0:
            raise ValueError(f"grant amount must be positive, got {amount}")
        return await self._adjust(
            guild_id, user_id, LedgerKind.GRANT, actor_id, reason, idempotency_key, lambda balance: amount
        )

    async def take(
        self,
        guild_id: int,
        user_id: int,
        amount: int,
        actor_id: int | None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Remove up to ``amount`` (> 0) credits — never below zero; returns the new balance."""
        if amount <= 0:
            raise ValueError(f"take amount must be positive, got {amount}")
        return await self._adjust(
            guild_id,
            user_id,
            LedgerKind.TAKE,
            actor_id,
            reason,
            idempotency_key,
            lambda balance: -min(amount, balance),
        )

    async def set_balance(
        self,
        guild_id: int,
        user_id: int,
        amount: int,
        actor_id: int | None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Set the balance to ``amount`` (>= 0) with a ``set`` entry of the difference; returns it."""
        if amount < 0:
            raise ValueError(f"a balance cannot be negative, got {amount}")
        return await self._adjust(
            guild_id,
            user_id,
            LedgerKind.SET,
            actor_id,
            reason,
            idempotency_key,
            lambda balance: amount - balance,
        )

    async def _adjust(
        self,
        guild_id: int,
        user_id: int,
        kind: LedgerKind,
        actor_id: int | None,
        reason: str | None,
        key: str | None,
        delta_of: Callable[[int], int],
    ) -> int:
        now = self.db.now()
        explicit_key = key is not None
        key = key or f"{kind}:{uuid.uuid4().hex}"

        def unit(s: Session) -> int:
            policy = _sql.load_policy(s, guild_id, self.policy)
            account = _sql.open_account(s, guild_id, user_id, policy, now)
            if s.scalar(select(_sql.ledger.c.id).where(_sql.ledger.c.idempotency_key == key)) is not None:
                return account.balance
            delta = delta_of(account.balance)
            return _sql.post_entry(s, account.id, delta, kind, key, now=now, actor_id=actor_id, reason=reason)

        try:
            return await self.db.run_write(unit)
        except IntegrityError:
            # the same idempotency key was posted concurrently (PostgreSQL): that posting stands
            if explicit_key and await self.db.run_read(lambda s: _key_exists(s, key)):
                return await self.balance(guild_id, user_id)
            raise

    async def entries(
        self, guild_id: int, user_id: int, limit: int = 10, offset: int = 0
    ) -> list[LedgerEntry]:
        """Newest first."""

        def unit(s: Session) -> list[LedgerEntry]:
            return list(
                s.scalars(
                    select(LedgerEntry)
                    .join(Account, Account.id == LedgerEntry.account_id)
                    .where(Account.guild_id == guild_id, Account.user_id == user_id)
                    .order_by(LedgerEntry.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            )

        return await self.db.run_read(unit)

    async def next_topup(self, guild_id: int, user_id: int) -> datetime | None:
        """The earliest time of the next top-up (it applies then only if the balance is below the floor);
        ``None`` when top-ups are disabled for the guild. A user without an account gets one first."""
        policy = await self.policy_for(guild_id)
        if not policy.topups_enabled:
            return None
        await self.balance(guild_id, user_id)
        account = await self.db.run_read(lambda s: _sql.find_account(s, guild_id, user_id))
        assert account is not None
        return account.last_topup_at + timedelta(seconds=policy.topup_period_s)

    async def check_invariant(self) -> list[str]:
        """Problems found, empty when the books balance:

        * every account's balance equals the sum of its entries, each entry's ``balance_after`` is the running
          sum, and no balance is negative;
        * every job has exactly one ``reserve`` of ``-cost``; a queued/running job has no settle/refund; a done
          job has one settle and no refund; a failed/cancelled job has one refund of ``+cost`` and no settle — or,
          failed after it was done because its result could not be posted, one settle and one refund that
          together give back the whole cost.
        """
        problems = await self.db.run_read(_audit_books)
        for p in problems:
            log.error("ledger invariant: %s", p)
        return problems


def _key_exists(s: Session, key: str) -> bool:
    return s.scalar(select(_sql.ledger.c.id).where(_sql.ledger.c.idempotency_key == key)) is not None


def _audit_books(s: Session) -> list[str]:
    problems: list[str] = []
    led = _sql.ledger
    acc = _sql.accounts
    sums = s.execute(
        select(
            acc.c.id, acc.c.guild_id, acc.c.user_id, acc.c.balance, func.coalesce(func.sum(led.c.delta), 0)
        )
        .select_from(acc.outerjoin(led, led.c.account_id == acc.c.id))
        .group_by(acc.c.id, acc.c.guild_id, acc.c.user_id, acc.c.balance)
    ).all()
    for account_id, guild_id, user_id, balance, total in sums:
        if balance != total:
            problems.append(
                f"account {account_id} (guild {guild_id}, user {user_id}): balance {balance} != sum of entries {total}"
            )
        if balance < 0:
            problems.append(f"account {account_id}: negative balance {balance}")
    running: dict[int, int] = {}
    rows = s.execute(
        select(led.c.id, led.c.account_id, led.c.delta, led.c.balance_after).order_by(
            led.c.account_id, led.c.id
        )
    )
    for entry_id, account_id, delta, after in rows:
        running[account_id] = running.get(account_id, 0) + delta
        if running[account_id] != after:
            problems.append(f"entry {entry_id}: balance_after {after} != running sum {running[account_id]}")
            running[account_id] = after
    by_job: dict[int, list[tuple[str, int]]] = {}
    for job_id, kind, delta in s.execute(
        select(led.c.job_id, led.c.kind, led.c.delta).where(led.c.job_id.is_not(None))
    ):
        by_job.setdefault(job_id, []).append((kind, delta))
    for job_id, status, cost in s.execute(select(Job.id, Job.status, Job.cost)):
        kinds = by_job.get(job_id, [])
        reserves = [d for k, d in kinds if k == LedgerKind.RESERVE]
        settles = [d for k, d in kinds if k == LedgerKind.SETTLE]
        refunds = [d for k, d in kinds if k == LedgerKind.REFUND]
        if reserves != [-cost]:
            problems.append(f"job {job_id}: reserve entries {reserves}, expected [{-cost}]")
        if status in ACTIVE_STATUSES:
            if settles or refunds:
                problems.append(f"job {job_id} is {status} but has settle {settles} / refund {refunds}")
        elif status == JobStatus.DONE:
            if len(settles) != 1 or refunds:
                problems.append(f"job {job_id} is done with settle {settles} and refund {refunds}")
        elif status == JobStatus.FAILED and len(settles) == 1:  # done, then its result could not be posted
            if len(refunds) != 1 or settles[0] + refunds[0] != cost:
                problems.append(f"job {job_id} is {status} with refund {refunds} and settle {settles}")
        elif len(refunds) != 1 or refunds[0] != cost or settles:
            problems.append(f"job {job_id} is {status} with refund {refunds} and settle {settles}")
    return problems
