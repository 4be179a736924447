"""Server settings: the one declared schema of what a server (guild), a channel and a member set, with the
bot's defaults and hard limits (config.toml), validated on write and read through `ServerSettings`
(``services.settings``).  Nothing else reads or writes the settings blobs.

The schema, as stored (the layout of migration 0001; ``storage.settings`` keeps the blobs)::

    guild_settings.settings = {
        "limits": {"max_steps": 20, ...},        # the guild's overrides of LIMIT_NAMES (/admin limits)
        "negative": "ugly hands",                  # added to every request's negative (/admin negative)
        "model": "anime",                          # the server's default model (/admin model)
        "nsfw": {"terms": "gore, blood", "negative": "...", "image_check": false},   # /admin nsfw
        "cost_policy": {"start_balance": 42, "topup_floor": 10, "topup_period_s": 3600.0,
                        "multipliers": {"imagine": 3.0, ...}, "max_queued_per_user": 2},  # /admin credits policy,
                                                   # /admin limits max_queued; read by storage.CostPolicy too
        "hypernet:<member id>": [[module_id, strength], ...],                       # /hypernet use, off
    }
    channel_settings row = enabled (False: /admin channels deny) + settings = {
        "allowed": true,                           # /admin channels allow: once any is, only those work
        "limits": {"max_count": 1, ...},           # the channel's overrides, over the guild's
    }

Defaults are config.toml's (``[limits]``, ``[moderation]``, ``[credits]``); the bot's limits are also every
override's ceiling: a write above one is refused and a stored value above one (config.toml lowered since)
reads as the ceiling.  Banned words are rows of their own (``storage.moderation``), read and written here
too.  Banned entries and NSFW terms read as compiled `WordFilter`s (``services.text_filter``, RE2): an
entry is checked when it is added, and a stored regex RE2 cannot run reads as disabled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.config import Config
from services.jobs import UserError
from services.text_filter import (
    REGEX_PREFIX,
    PatternError,
    WordFilter,
    compile_entries,
    compile_entry,
    fold,
    shown,
)
from storage import CostPolicy, JobKind, moderation, settings

LIMIT_NAMES = ("max_steps", "max_area", "max_count", "max_train_images", "max_train_steps")
"""The limits a guild or one channel may lower; ``max_queued`` (a member's waiting jobs) is per guild only."""
POLICY_FIELDS = ("start_balance", "topup_floor", "topup_period_s", "multipliers")
"""The fields of the bot's `CostPolicy` a guild may override (``max_queued_per_user`` through its limits)."""
CHANNEL_ACCESS = {"allow": (True, True), "deny": (False, None), "reset": (True, None)}  # -> (enabled, allowed)
STRENGTH_RANGE = (-2.0, 2.0)
"""What a hypernetwork's strength may be, as a member's choice or in a prompt tag."""
MAX_MULTIPLIER = 100.0
_HYPERNET_PREFIX = "hypernet:"


def check_strength(strength: float) -> float:
    if not math.isfinite(strength) or not STRENGTH_RANGE[0] <= strength <= STRENGTH_RANGE[1]:
        raise UserError(f"Strength must be between {STRENGTH_RANGE[0]:g} and {STRENGTH_RANGE[1]:g} (1 = as trained, 0 = off).")
    return float(strength)


def split_terms(text: str) -> tuple[str, ...]:
    return tuple(t.strip().casefold() for t in text.split(",") if t.strip())


def validate_banned_entry(entry: str) -> str:
    """A banned entry or NSFW term as it will be stored, or `UserError` saying what is wrong with it (a
    regex must compile under RE2, the linear-time engine every filter runs on)."""
    entry = entry.strip()
    if not entry:
        raise UserError("Give a word, a phrase, or a regex written as `re:<pattern>`.")
    if entry.startswith(REGEX_PREFIX):
        if entry != entry.casefold():
            raise UserError("Regexes are matched ignoring case and stored in lower case: write it in lower case "
                            "(for `\\W`, `\\S`, `\\D` use `[^\\w]`, `[^\\s]`, `[^\\d]`).")
    elif not fold(entry).split():
        raise UserError("Give a word or phrase with letters or digits in it.")
    try:
        compile_entry(entry.casefold())
    except PatternError as exc:
        raise UserError(f"`{shown(entry)}` is not a valid regex: {exc}.") from None
    return entry.casefold()


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_steps: int
    max_area: int
    max_count: int
    max_queued: int
    max_train_images: int
    max_train_steps: int

    def describe(self) -> str:
        return "\n".join(f"`{k}` = {v}" for k, v in dataclasses.asdict(self).items())

    def lowered(self, overrides: Mapping[str, Any]) -> Limits:
        """These limits with the known ``overrides`` applied, none above these (the ceilings)."""
        names = {f.name for f in dataclasses.fields(self)}
        changes = {k: min(int(v), getattr(self, k)) for k, v in overrides.items() if k in names}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class NsfwRules:
    terms: WordFilter
    negative: str
    image_check: bool


@dataclass(frozen=True)
class ActiveHypernet:
    """A module a member applies to their /imagine jobs (the module row's id) and its strength."""

    module_id: int
    strength: float


@dataclass(frozen=True)
class ChannelSettings:
    channel_id: int
    enabled: bool = True
    allowed: bool = False
    limits: Mapping[str, int] = field(default_factory=dict)  # overrides of the guild's limits


@dataclass(frozen=True)
class GuildSettings:
    """One guild's settings with the bot's defaults where it set nothing."""

    ceilings: Limits  # the bot's own limits: the defaults and every override's ceiling
    limit_overrides: Mapping[str, int]
    negative: str
    model: str  # the server's default model ("": the bot's)
    nsfw: NsfwRules
    policy: CostPolicy
    banned: WordFilter  # ``disabled``: stored regexes RE2 cannot run (written before it was the engine)
    hypernets: Mapping[int, tuple[ActiveHypernet, ...]]  # per member id

    def limits_in(self, channel: ChannelSettings | None = None) -> Limits:
        """The limits in ``channel`` (its overrides over the guild's), or the guild's."""
        overrides = {**self.limit_overrides, **(channel.limits if channel else {})}
        return self.ceilings.lowered({**overrides, "max_queued": self.policy.max_queued_per_user})


class ServerSettings:
    def __init__(self, db: Any, config: Config, policy: CostPolicy) -> None:
        self.db = db
        self.config = config
        self.base_policy = policy  # the bot-wide one (config.toml [credits], [limits] max_queued_per_user)

    @property
    def ceilings(self) -> Limits:
        limits = self.config.limits
        return Limits(
            max_steps=limits.max_steps,
            max_area=self.config.generation.max_area,
            max_count=limits.max_count,
            max_queued=limits.max_queued_per_user,
            max_train_images=limits.max_train_images,
            max_train_steps=limits.max_train_steps,
        )

    # -- reading -------------------------------------------------------------------------------------
    def _guild(self, blob: Mapping[str, Any], words: Sequence[str]) -> GuildSettings:
        conf = self.config.moderation
        nsfw = blob.get("nsfw") or {}
        hypernets = {
            int(key[len(_HYPERNET_PREFIX):]): tuple(ActiveHypernet(int(m), float(s)) for m, s in value)
            for key, value in blob.items()
            if key.startswith(_HYPERNET_PREFIX) and value
        }
        return GuildSettings(
            ceilings=self.ceilings,
            limit_overrides=dict(blob.get("limits") or {}),
            negative=blob.get("negative") or "",
            model=blob.get("model") or "",
            nsfw=NsfwRules(
                terms=compile_entries(split_terms(nsfw.get("terms", conf.nsfw_terms))),
                negative=nsfw.get("negative", conf.sfw_negative),
                image_check=nsfw.get("image_check", conf.image_check != "false"),
            ),
            policy=settings.policy_of(blob, self.base_policy),
            banned=compile_entries(tuple(words)),
            hypernets=hypernets,
        )

    @staticmethod
    def _channel(row: Any) -> ChannelSettings:
        blob = row.settings or {}
        return ChannelSettings(row.channel_id, row.enabled, bool(blob.get("allowed")), dict(blob.get("limits") or {}))

    async def in_channel(self, guild_id: int, channel_id: int | None) -> tuple[GuildSettings, ChannelSettings | None]:
        """The guild's settings and the channel's (None: it has none), in one transaction."""
        blob, row, words = await moderation.rules_snapshot(self.db, guild_id, channel_id)
        return self._guild(blob, words), (self._channel(row) if row is not None else None)

    async def guild(self, guild_id: int) -> GuildSettings:
        return (await self.in_channel(guild_id, None))[0]

    async def limits(self, guild_id: int, channel_id: int | None = None) -> Limits:
        guild, channel = await self.in_channel(guild_id, channel_id)
        return guild.limits_in(channel)

    async def policy(self, guild_id: int) -> CostPolicy:
        """The guild's cost policy (storage reads the same inside the enqueue transaction)."""
        return await settings.guild_policy(self.db, guild_id, self.base_policy)

    async def channels(self, guild_id: int) -> list[ChannelSettings]:
        """Every channel of the guild that has settings of its own."""
        return [self._channel(r) for r in await settings.guild_channel_settings(self.db, guild_id)]

    async def access(self, guild_id: int, user_id: int) -> tuple[Any, list[ChannelSettings]]:
        """The member's ban row (None: none) and the guild's channel settings, in one transaction."""
        ban, rows = await moderation.access_snapshot(self.db, guild_id, user_id)
        return ban, [self._channel(r) for r in rows]

    # -- writing: every value is checked here; a refusal is a `UserError` and nothing is stored ----------
    async def set_limits(
        self, guild_id: int, actor_id: int, channel_id: int | None, changes: Mapping[str, int], reset: bool = False
    ) -> None:
        """Lower limits for the guild or one channel (``reset`` first removes the current overrides);
        ``max_queued`` is the guild's only.  An override never exceeds the bot's own limit."""
        ceilings = dataclasses.asdict(self.ceilings)
        for key, value in changes.items():
            if key not in ceilings:
                raise UserError(f"`{key}` is not a limit; the limits are {', '.join(LIMIT_NAMES)}, max_queued.")
            if value > ceilings[key]:
                raise UserError(f"`{key}` can be at most {ceilings[key]} on this bot (its config.toml); you asked for {value}.")
            if value < 1:
                raise UserError(f"`{key}` must be at least 1; you asked for {value}.")
        patch = {k: int(v) for k, v in changes.items() if k != "max_queued"}
        if channel_id is not None:
            if "max_queued" in changes:
                raise UserError("`max_queued` counts a member's jobs in the whole server; set it without `channel`.")
            row = await settings.get_channel_settings(self.db, channel_id)
            current = {} if reset or row is None else self._channel(row).limits
            await settings.update_channel_settings(
                self.db, guild_id, channel_id, patch={"limits": {**current, **patch} or None}, actor_id=actor_id
            )
            return
        current = {} if reset else (await self.guild(guild_id)).limit_overrides
        await settings.update_guild_settings(self.db, guild_id, {"limits": {**current, **patch} or None}, actor_id)
        if "max_queued" in changes or reset:
            await settings.set_guild_policy(self.db, guild_id, actor_id, max_queued_per_user=changes.get("max_queued"))

    async def set_policy(self, guild_id: int, actor_id: int, changes: Mapping[str, Any]) -> None:
        """Override start balance, top-ups (``topup_period_s``) and price multipliers (``{kind: m}``, merged
        into the guild's) of the bot's cost policy."""
        for key, value in changes.items():
            if key not in POLICY_FIELDS:
                raise UserError(f"`{key}` is not a credit setting; they are {', '.join(POLICY_FIELDS)}.")
            if key != "multipliers" and not (math.isfinite(value) and value >= 0):
                raise UserError(f"`{key}` must be 0 or more; you gave {value}.")
        kinds = [k.value for k in JobKind]
        for kind, value in changes.get("multipliers", {}).items():
            if kind not in kinds:
                raise UserError(f"`{kind}` has no price; the kinds are {', '.join(kinds)}.")
            if not (math.isfinite(value) and 0 <= value <= MAX_MULTIPLIER):
                raise UserError(f"A price multiplier is between 0 and {MAX_MULTIPLIER:g}; you gave {value} for `{kind}`.")
        if "multipliers" in changes:
            current = (await self.policy(guild_id)).multipliers
            changes = {**changes, "multipliers": {**current, **{k: float(v) for k, v in changes["multipliers"].items()}}}
        await settings.set_guild_policy(self.db, guild_id, actor_id, **changes)

    async def set_nsfw(
        self, guild_id: int, actor_id: int, *, terms: str | None = None, negative: str | None = None, image_check: bool | None = None
    ) -> dict[str, Any]:
        """Change the guild's NSFW rules (None: unchanged); returns what changed."""
        patch: dict[str, Any] = {}
        if terms is not None:
            patch["terms"] = ", ".join(validate_banned_entry(term) for term in split_terms(terms))
        if negative is not None:
            patch["negative"] = negative.strip()
        if image_check is not None:
            patch["image_check"] = bool(image_check)
        if patch:
            current = (await settings.get_guild_settings(self.db, guild_id)).get("nsfw") or {}
            await settings.update_guild_settings(self.db, guild_id, {"nsfw": {**current, **patch}}, actor_id)
        return patch

    async def add_banned_word(self, guild_id: int, actor_id: int, entry: str) -> str:
        """Ban a word, a phrase or a ``re:`` regex (checked by `validate_banned_entry`); the entry as stored."""
        entry = validate_banned_entry(entry)
        if not await moderation.add_banned_word(self.db, guild_id, entry, actor_id):
            raise UserError(f"`{entry}` is already banned.")
        return entry

    async def remove_banned_word(self, guild_id: int, entry: str) -> bool:
        """Allow a banned entry again; False if it was not banned."""
        return await moderation.remove_banned_word(self.db, guild_id, entry)

    async def set_model(self, guild_id: int, actor_id: int, name: str | None) -> None:
        """Set (None: remove) the server's default model; it must be one of config.toml's models."""
        if name is not None and name not in self.config.models:
            raise UserError(f"There is no model `{name}`; the models are {', '.join(self.config.models)}.")
        await settings.update_guild_settings(self.db, guild_id, {"model": name}, actor_id)

    async def set_negative(self, guild_id: int, actor_id: int, value: str | None) -> str | None:
        """Set (None or blank: remove) the negative prompt added to every request; returns what is stored."""
        value = (value or "").strip() or None
        await settings.update_guild_settings(self.db, guild_id, {"negative": value}, actor_id)
        return value

    async def set_channel_access(self, guild_id: int, actor_id: int, channel_id: int, access: str) -> None:
        if access not in CHANNEL_ACCESS:
            raise UserError(f"`{access}` is not a channel setting; use {', '.join(CHANNEL_ACCESS)}.")
        enabled, allowed = CHANNEL_ACCESS[access]
        await settings.update_channel_settings(
            self.db, guild_id, channel_id, enabled=enabled, patch={"allowed": allowed}, actor_id=actor_id
        )

    async def set_hypernets(self, guild_id: int, user_id: int, active: Sequence[ActiveHypernet]) -> None:
        """The modules a member applies to their /imagine jobs, in order (empty: none)."""
        for entry in active:
            check_strength(entry.strength)
        limit = self.config.hypernet.max_active
        if len(active) > limit:
            raise UserError(f"At most {limit} modules can be active at once. Turn one off with `/hypernet off name`.")
        value = [[a.module_id, a.strength] for a in active] or None
        await settings.update_guild_settings(self.db, guild_id, {f"{_HYPERNET_PREFIX}{user_id}": value}, user_id)
