"""What /admin changes, between the cog and storage: price policy, limits, channels, NSFW rules, banned
words, the server negative, bans, module reviews and the audit log.  Every change is audited with the
admin's id; refusals are `UserError`s.  Settings are checked and stored by `services.settings.ServerSettings`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from services.jobs import UserError
from storage import ModuleStatus, gc, hypernetworks, images, members, moderation


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
        await self.services.settings.set_policy(guild_id, actor_id, changes)
        await self.audit(guild_id, actor_id, "credits.policy", details=changes)

    # -- limits ----------------------------------------------------------------------------------------
    async def set_limits(self, guild_id: int, actor_id: int, channel_id: int | None, changes: dict[str, int], reset: bool) -> None:
        """Override limits for the guild or one channel (``reset`` first removes the current overrides)."""
        if not changes and not reset:
            return
        await self.services.settings.set_limits(guild_id, actor_id, channel_id, changes, reset)
        await self.audit(guild_id, actor_id, "limits", details={"channel": channel_id, "reset": reset, **changes})

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
        await self.services.settings.set_channel_access(guild_id, actor_id, channel_id, access)
        await self.audit(guild_id, actor_id, f"channels.{access}", details={"channel": channel_id})

    # -- NSFW, banned words, server negative -----------------------------------------------------------
    async def set_nsfw(self, guild_id: int, actor_id: int, **changes: Any) -> bool:
        """Change the NSFW rules (``terms``, ``negative``, ``image_check``); True if anything changed."""
        patch = await self.services.settings.set_nsfw(guild_id, actor_id, **changes)
        if patch:
            await self.audit(guild_id, actor_id, "nsfw", details=patch)
        return bool(patch)

    async def add_word(self, guild_id: int, actor_id: int, entry: str) -> str:
        """Ban ``entry`` (checked by `ServerSettings.add_banned_word`); the entry as stored."""
        entry = await self.services.settings.add_banned_word(guild_id, actor_id, entry)
        await self.audit(guild_id, actor_id, "words.add", details={"word": entry})
        return entry

    async def remove_word(self, guild_id: int, actor_id: int, word: str) -> bool:
        if not await self.services.settings.remove_banned_word(guild_id, word):
            return False
        await self.audit(guild_id, actor_id, "words.remove", details={"word": word.strip().casefold()})
        return True

    async def set_negative(self, guild_id: int, actor_id: int, value: str | None) -> None:
        value = await self.services.settings.set_negative(guild_id, actor_id, value)
        await self.audit(guild_id, actor_id, "negative", details={"negative": value})

    # -- forgetting a member -----------------------------------------------------------------------------
    async def forget(self, guild_id: int, user_id: int, actor_id: int) -> tuple[list[Any], members.Forgotten]:
        """Forget a member here (on their own request, or an admin's): their waiting and running jobs are
        cancelled and refunded first, then `storage.members.forget` erases their data, and the files only
        they used go (pictures, module files, /edit's tuned states).  Audited; returns the cancelled jobs
        and what was forgotten."""
        services = self.services
        cancelled = await services.rules.cancel_jobs(guild_id, user_id, actor_id)
        forgotten = await members.forget(self.db, guild_id, user_id)
        await services.settings.set_hypernets(guild_id, user_id, [])
        removed = await gc.discard(self.db, services.store, forgotten.keys)

        def remove_files() -> None:
            for path in forgotten.module_paths:
                Path(path).unlink(missing_ok=True)
            for job_id in forgotten.jobs:
                services.edit_cache.remove(job_id)

        await asyncio.to_thread(remove_files)
        await self.audit(guild_id, actor_id, "forget", target_user_id=user_id, details={
            "cancelled_jobs": [j.id for j in cancelled], "images": forgotten.images, "jobs": len(forgotten.jobs),
            "files": removed.files, "modules": list(forgotten.modules), "kept_modules": list(forgotten.kept_modules),
        })  # fmt: skip
        return cancelled, forgotten

    # -- the image store -------------------------------------------------------------------------------
    async def storage_use(self, guild_id: int) -> tuple[gc.Files, gc.Files]:
        """Disk use of the whole image store, and of this server's pictures in it."""
        store = self.services.store
        return await gc.usage(store), await gc.usage(store, await images.guild_keys(self.db, guild_id))

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
