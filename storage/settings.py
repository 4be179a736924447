"""Users, guilds, per-guild and per-channel settings, and the per-guild cost policy override."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage import _sql
from storage.db import Database
from storage.errors import WrongGuild
from storage.models import ChannelSettings, GuildSettings
from storage.policy import CostPolicy


def _merge(current: dict[str, Any] | None, patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(current or {})
    for k, v in patch.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


async def touch_user(db: Database, user_id: int, name: str | None = None) -> None:
    """Make sure the user row exists (and remember the display name if given)."""
    now = db.now()
    await db.run_write(lambda s: _sql.ensure_user(s, user_id, now, name))


async def touch_guild(db: Database, guild_id: int, name: str | None = None) -> None:
    now = db.now()
    await db.run_write(lambda s: _sql.ensure_guild(s, guild_id, now, name))


async def get_guild_settings(db: Database, guild_id: int) -> dict[str, Any]:
    """The guild's settings blob (a copy; empty if never set)."""
    value = await db.run_read(
        lambda s: s.scalar(select(GuildSettings.settings).where(GuildSettings.guild_id == guild_id))
    )
    return dict(value or {})


async def update_guild_settings(
    db: Database, guild_id: int, patch: dict[str, Any], actor_id: int | None = None
) -> dict[str, Any]:
    """Shallow-merge ``patch`` into the blob (a ``None`` value removes the key); returns the new blob."""
    now = db.now()

    def unit(s: Session) -> dict[str, Any]:
        _sql.ensure_guild_settings(s, guild_id, now)
        current = s.scalar(
            select(GuildSettings.settings).where(GuildSettings.guild_id == guild_id).with_for_update()
        )
        merged = _merge(current, patch)
        s.execute(
            update(_sql.guild_settings)
            .where(_sql.guild_settings.c.guild_id == guild_id)
            .values(settings=merged, updated_by=actor_id, updated_at=now)
        )
        return merged

    return await db.run_write(unit)


async def set_guild_policy(
    db: Database, guild_id: int, actor_id: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """Override fields of the bot-wide :class:`CostPolicy` for one guild (``None`` clears an override);
    returns the guild's overrides. Unknown field names raise ``ValueError``."""
    known = set(CostPolicy.__dataclass_fields__)
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown cost policy fields {sorted(unknown)}; known: {sorted(known)}")
    current = (await get_guild_settings(db, guild_id)).get(_sql.POLICY_KEY, {})
    merged = _merge(current, overrides)
    await update_guild_settings(db, guild_id, {_sql.POLICY_KEY: merged or None}, actor_id)
    return merged


def policy_of(guild_settings: dict[str, Any], base: CostPolicy) -> CostPolicy:
    """``base`` with the overrides in a guild's settings blob: what the ledger and the queue charge."""
    return _sql.policy_from_settings(base, guild_settings)


async def guild_policy(db: Database, guild_id: int, base: CostPolicy | None = None) -> CostPolicy:
    """``base`` (default ``CostPolicy()``) with the guild's overrides applied."""
    return await db.run_read(lambda s: _sql.load_policy(s, guild_id, base or CostPolicy()))


async def get_channel_settings(db: Database, channel_id: int) -> ChannelSettings | None:
    return await db.run_read(lambda s: s.get(ChannelSettings, channel_id))


async def update_channel_settings(
    db: Database,
    guild_id: int,
    channel_id: int,
    *,
    enabled: bool | None = None,
    patch: dict[str, Any] | None = None,
    actor_id: int | None = None,
) -> ChannelSettings:
    """Create or change a channel's settings; ``patch`` is shallow-merged into its blob (``None`` removes)."""
    now = db.now()

    def unit(s: Session) -> ChannelSettings:
        _sql.ensure_guild(s, guild_id, now)
        row = s.get(ChannelSettings, channel_id, with_for_update=True)
        if row is not None and row.guild_id != guild_id:
            raise WrongGuild(f"channel {channel_id} belongs to another server")
        if row is None:
            row = ChannelSettings(
                channel_id=channel_id,
                guild_id=guild_id,
                enabled=True,
                settings={},
                updated_at=now,
            )
            s.add(row)
        if enabled is not None:
            row.enabled = enabled
        if patch:
            row.settings = _merge(row.settings, patch)
        row.updated_by = actor_id
        row.updated_at = now
        s.flush()
        return row

    return await db.run_write(unit)


async def guild_channel_settings(db: Database, guild_id: int) -> list[ChannelSettings]:
    """Every channel of the guild that has its own settings row."""
    stmt = select(ChannelSettings).where(ChannelSettings.guild_id == guild_id).order_by(ChannelSettings.channel_id)
    return await db.run_read(lambda s: list(s.scalars(stmt)))
