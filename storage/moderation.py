"""Bans, banned words, the admin audit log, and the reads behind a server's rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage import _sql
from storage.db import Database
from storage.models import AuditEntry, Ban, BannedWord, ChannelSettings, GuildSettings


async def audit(
    db: Database,
    guild_id: int,
    actor_id: int,
    action: str,
    *,
    target_user_id: int | None = None,
    target_job_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append an admin audit entry (e.g. ``action="credits.grant"``)."""
    entry = AuditEntry(
        guild_id=guild_id,
        actor_id=actor_id,
        action=action,
        target_user_id=target_user_id,
        target_job_id=target_job_id,
        details=dict(details or {}),
        created_at=db.now(),
    )

    def unit(s: Session) -> AuditEntry:
        s.add(entry)
        s.flush()
        return entry

    return await db.run_write(unit)


async def audit_entries(db: Database, guild_id: int, limit: int = 20, offset: int = 0) -> list[AuditEntry]:
    """Newest first."""
    stmt = (
        select(AuditEntry)
        .where(AuditEntry.guild_id == guild_id)
        .order_by(AuditEntry.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def ban(
    db: Database,
    guild_id: int,
    user_id: int,
    actor_id: int | None,
    reason: str | None = None,
    expires_at: datetime | None = None,
) -> None:
    """Ban (or re-ban, replacing reason and expiry) a user in a guild."""
    now = db.now()
    table = Ban.__table__

    def unit(s: Session) -> None:
        _sql.ensure_guild(s, guild_id, now)
        s.execute(
            _sql.upsert(s, table)  # type: ignore[arg-type]
            .values(
                guild_id=guild_id,
                user_id=user_id,
                actor_id=actor_id,
                reason=reason,
                expires_at=expires_at,
                created_at=now,
            )
            .on_conflict_do_update(
                index_elements=[table.c.guild_id, table.c.user_id],
                set_={"actor_id": actor_id, "reason": reason, "expires_at": expires_at, "created_at": now},
            )
        )

    await db.run_write(unit)


async def unban(db: Database, guild_id: int, user_id: int) -> bool:
    stmt = delete(Ban).where(Ban.guild_id == guild_id, Ban.user_id == user_id)
    return await db.run_write(lambda s: bool(s.execute(stmt).rowcount))


async def get_ban(db: Database, guild_id: int, user_id: int) -> Ban | None:
    """The active ban, if any (an expired ban counts as none)."""
    found = await db.run_read(lambda s: s.get(Ban, (guild_id, user_id)))
    if found is None or (found.expires_at is not None and found.expires_at <= db.now()):
        return None
    return found


async def is_banned(db: Database, guild_id: int, user_id: int) -> bool:
    return await get_ban(db, guild_id, user_id) is not None


def _normalise(word: str) -> str:
    word = word.strip().casefold()
    if not word:
        raise ValueError("a banned word cannot be empty")
    return word


async def add_banned_word(db: Database, guild_id: int, word: str, actor_id: int | None = None) -> bool:
    """True if added, False if it was already banned. Words are stored case-folded."""
    word = _normalise(word)
    now = db.now()
    table = BannedWord.__table__

    def unit(s: Session) -> bool:
        _sql.ensure_guild(s, guild_id, now)
        added = s.scalar(
            _sql.upsert(s, table)  # type: ignore[arg-type]
            .values(guild_id=guild_id, word=word, actor_id=actor_id, created_at=now)
            .on_conflict_do_nothing(index_elements=[table.c.guild_id, table.c.word])
            .returning(table.c.id)
        )
        return added is not None

    return await db.run_write(unit)


async def remove_banned_word(db: Database, guild_id: int, word: str) -> bool:
    stmt = delete(BannedWord).where(BannedWord.guild_id == guild_id, BannedWord.word == _normalise(word))
    return await db.run_write(lambda s: bool(s.execute(stmt).rowcount))


async def banned_words(db: Database, guild_id: int) -> list[str]:
    stmt = select(BannedWord.word).where(BannedWord.guild_id == guild_id).order_by(BannedWord.word)
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def bans(db: Database, guild_id: int) -> list[Ban]:
    """The guild's active bans, oldest first (expired ones are left out)."""
    now = db.now()
    stmt = (
        select(Ban)
        .where(Ban.guild_id == guild_id, (Ban.expires_at.is_(None)) | (Ban.expires_at > now))
        .order_by(Ban.created_at, Ban.user_id)
    )
    return await db.run_read(lambda s: list(s.scalars(stmt)))


async def rules_snapshot(
    db: Database, guild_id: int, channel_id: int | None
) -> tuple[dict[str, Any], ChannelSettings | None, list[str]]:
    """What the rules of one request read, in one transaction: the guild's settings blob, the
    channel's settings row (None if it has none) and the guild's banned words."""

    def read(s: Session) -> tuple[dict[str, Any], ChannelSettings | None, list[str]]:
        blob = s.scalar(select(GuildSettings.settings).where(GuildSettings.guild_id == guild_id)) or {}
        channel = s.get(ChannelSettings, channel_id) if channel_id else None
        words = list(s.scalars(select(BannedWord.word).where(BannedWord.guild_id == guild_id)))
        return blob, channel, words

    return await db.run_read(read)


async def access_snapshot(db: Database, guild_id: int, user_id: int) -> tuple[Ban | None, list[ChannelSettings]]:
    """What decides whether a member may use the bot in a channel, in one transaction: their ban
    (None if none) and every channel settings row of the guild."""

    def read(s: Session) -> tuple[Ban | None, list[ChannelSettings]]:
        ban = s.get(Ban, (guild_id, user_id))
        rows = list(s.scalars(select(ChannelSettings).where(ChannelSettings.guild_id == guild_id)))
        return ban, rows

    return await db.run_read(read)
