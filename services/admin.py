"""What /admin changes, between the cog and storage: price policy, limits, channels, NSFW rules, banned
words, the server negative, bans, module reviews and the audit log.  Every change is audited with the
admin's id; refusals are `UserError`s.
"""

from __future__ import annotations

from typing import Any

from services.jobs import UserError
from services.rules import LIMIT_KEYS
from storage import ModuleStatus, hypernetworks, moderation, settings

CHANNEL_ACCESS = {"allow": (True, True), "deny": (False, None), "reset": (True, None)}  # -> (enabled, allowed)


class ServerAdmin:
    def __init__(self, services: Any) -> None:
        self.services = services

    @property
    def db(self) -> Any:
        return self.services.db

    async def audit(self, guild_id: int, actor_id: int, action: str, **kwargs: Any) -> None:
        await moderation.audit(self.db, guild_id, actor_id, action, **kwargs)

    async def audit_page(self, guild_id: int, page: int, size: int) -> list[Any]:
        return await moderation.audit_entries(self.db, guild_id, limit=size, offset=(page - 1) * size)

    # -- credits ---------------------------------------------------------------------------------------
    async def set_policy(self, guild_id: int, actor_id: int, changes: dict[str, Any]) -> None:
        await settings.set_guild_policy(self.db, guild_id, actor_id, **changes)
        await self.audit(guild_id, actor_id, "credits.policy", details=changes)

    # -- limits ----------------------------------------------------------------------------------------
    async def set_limits(
        self, guild_id: int, actor_id: int, channel_id: int | None, patch: dict[str, int], max_queued: int | None, reset: bool
    ) -> None:
        """Override limits for the guild or one channel (``reset`` first removes the current overrides).
        An override never exceeds the bot's own limit (config.toml): `UserError` says which one."""
        ceilings = self.services.rules.default_limits(max_queued=0)
        for key, value in patch.items():
            if key not in LIMIT_KEYS:
                raise UserError(f"`{key}` is not a limit; the limits are {', '.join(LIMIT_KEYS)}.")
            if value > ceilings[key]:
                raise UserError(f"`{key}` can be at most {ceilings[key]} on this bot (its config.toml); you asked for {value}.")
        if channel_id is not None:
            if max_queued is not None:
                raise UserError("`max_queued` counts a member's jobs in the whole server; set it without `channel`.")
            row = await settings.get_channel_settings(self.db, channel_id)
            current = {} if reset or row is None else dict((row.settings or {}).get("limits", {}))
            await settings.update_channel_settings(
                self.db, guild_id, channel_id, patch={"limits": {**current, **patch} or None}, actor_id=actor_id
            )
        else:
            current = {} if reset else dict((await settings.get_guild_settings(self.db, guild_id)).get("limits", {}))
            await settings.update_guild_settings(self.db, guild_id, {"limits": {**current, **patch} or None}, actor_id)
            if max_queued is not None or reset:
                await settings.set_guild_policy(self.db, guild_id, actor_id, max_queued_per_user=max_queued)
        if patch or reset or max_queued is not None:
            await self.audit(guild_id, actor_id, "limits",
                             details={"channel": channel_id, "reset": reset, **patch, "max_queued": max_queued})  # fmt: skip

    # -- bans ------------------------------------------------------------------------------------------
    async def unban(self, guild_id: int, actor_id: int, user_id: int) -> bool:
        if not await moderation.unban(self.db, guild_id, user_id):
            return False
        await self.audit(guild_id, actor_id, "unban", target_user_id=user_id)
        return True

    async def bans(self, guild_id: int) -> list[Any]:
        return await moderation.bans(self.db, guild_id)

    # -- channels --------------------------------------------------------------------------------------
    async def set_channel_access(self, guild_id: int, actor_id: int, channel_id: int, access: str) -> None:
        enabled, allowed = CHANNEL_ACCESS[access]
        await settings.update_channel_settings(
            self.db, guild_id, channel_id, enabled=enabled, patch={"allowed": allowed}, actor_id=actor_id
        )
        await self.audit(guild_id, actor_id, f"channels.{access}", details={"channel": channel_id})

    async def channel_rows(self, guild_id: int) -> list[Any]:
        return await settings.guild_channel_settings(self.db, guild_id)

    # -- NSFW, banned words, server negative -----------------------------------------------------------
    async def update_nsfw(self, guild_id: int, actor_id: int, patch: dict[str, Any]) -> None:
        current = (await settings.get_guild_settings(self.db, guild_id)).get("nsfw", {})
        await settings.update_guild_settings(self.db, guild_id, {"nsfw": {**current, **patch}}, actor_id)
        await self.audit(guild_id, actor_id, "nsfw", details=patch)

    async def add_word(self, guild_id: int, actor_id: int, entry: str) -> bool:
        if not await moderation.add_banned_word(self.db, guild_id, entry, actor_id):
            return False
        await self.audit(guild_id, actor_id, "words.add", details={"word": entry})
        return True

    async def remove_word(self, guild_id: int, actor_id: int, word: str) -> bool:
        if not await moderation.remove_banned_word(self.db, guild_id, word):
            return False
        await self.audit(guild_id, actor_id, "words.remove", details={"word": word.strip().casefold()})
        return True

    async def words(self, guild_id: int) -> list[str]:
        return await moderation.banned_words(self.db, guild_id)

    async def set_negative(self, guild_id: int, actor_id: int, value: str | None) -> None:
        await settings.update_guild_settings(self.db, guild_id, {"negative": value}, actor_id)
        await self.audit(guild_id, actor_id, "negative", details={"negative": value})

    async def negative(self, guild_id: int) -> str | None:
        return (await settings.get_guild_settings(self.db, guild_id)).get("negative")

    # -- hypernetwork modules --------------------------------------------------------------------------
    async def review_hypernet(self, guild_id: int, actor_id: int, name: str, approve: bool) -> Any:
        """Approve or reject a module its owner shared; returns the module."""
        module = await hypernetworks.get(self.db, guild_id, name)
        if module is None:
            raise UserError(f"There is no module `{name}` on this server; see `/admin modules pending`.")
        if not module.shared:
            raise UserError(f"`{name}` was not shared by its owner, so there is nothing to review.")
        await hypernetworks.update(self.db, module.id, status=ModuleStatus.APPROVED if approve else ModuleStatus.REJECTED)
        await self.audit(guild_id, actor_id, f"modules.{'approve' if approve else 'reject'}",
                         target_user_id=module.owner_id, details={"module": name, "module_id": module.id})  # fmt: skip
        return module

    async def shared_hypernets(self, guild_id: int) -> list[Any]:
        return [m for m in await hypernetworks.list_all(self.db, guild_id) if m.shared]

    async def pending_hypernets(self, guild_id: int) -> list[Any]:
        return await hypernetworks.list_all(self.db, guild_id, ModuleStatus.PENDING)
