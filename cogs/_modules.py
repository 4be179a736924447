"""The commands every module library has — list, info, upload, delete, share, and for kinds a member turns
on, use and off — as one command group per kind (`/hypernet`, `/lora`, `/embedding`).

A cog declares its group as a class attribute, ``group = ModuleCommands(...)``, and may add commands of its
own with ``@group.command`` (as `/hypernet train` does); the library is ``bot.services.<library>``
(``services.modules.Library``).  Autocomplete filters by what the member has typed, so any number of files
stays reachable through Discord's 25 choices.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from services import ui
from services.modules import ActiveLibrary
from services.settings import STRENGTH_RANGE

LIST_LIMIT = 1900  # characters of /… list (Discord's message limit is 2000)


class ModuleCommands(app_commands.Group):
    """``/<kind> list|info|upload|delete|share[|use|off]`` for ``services.<library>``.  ``emoji`` marks its
    answers; ``how_to_use`` (formatted with ``name``) is told after an upload; ``active``: the kind has
    per-member defaults (use/off)."""

    def __init__(self, *, name: str, description: str, library: str, emoji: str, how_to_use: str, active: bool) -> None:
        super().__init__(name=name, description=description, guild_only=True)
        self.library_name = library
        self.emoji = emoji
        self.how_to_use = how_to_use
        if not active:
            self.remove_command("use")
            self.remove_command("off")

    @staticmethod
    def services(interaction: discord.Interaction) -> Any:
        return interaction.client.services

    def library(self, interaction: discord.Interaction) -> Any:
        return getattr(self.services(interaction), self.library_name)

    @staticmethod
    async def reply(interaction: discord.Interaction, text: str) -> None:
        await interaction.followup.send(ui.clip(text, 2000), ephemeral=True)  # the tree acknowledged the command

    async def names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = await self.library(interaction).names(interaction.guild_id, interaction.user.id, current)
        return [app_commands.Choice(name=n, value=n) for n in names]

    def active_line(self, entries: list[tuple[Any, float]]) -> str:
        if not entries:
            return f"No {self.name} modules are active: /imagine uses the plain model."
        return "Active for your /imagine jobs, in this order: " + ", ".join(f"`{m.name}` ×{s:g}" for m, s in entries)

    # -- browsing --------------------------------------------------------------------------------------------
    @app_commands.command(name="list", description="The files you can use on this server")
    async def list_(self, interaction: discord.Interaction) -> None:
        library, guild_id, user_id = self.library(interaction), interaction.guild_id, interaction.user.id
        rows = await library.visible(guild_id, user_id)
        active = {m.id: s for m, s in await library.active(guild_id, user_id)} if isinstance(library, ActiveLibrary) else {}
        lines, size = [], 0
        for i, m in enumerate(rows):
            state = "⏳ training" if not library.ready(m) else f"✅ active ×{active[m.id]:g}" if m.id in active else ""
            owner = "yours" if m.owner_id == user_id else f"by {ui.owner_mention(m.owner_id)}"
            sharing = f" · shared ({m.status})" if m.shared else ""
            line = f"• `{m.name}` — {owner}{sharing} {state}".rstrip()
            if size + len(line) > LIST_LIMIT:
                lines.append(f"… and {len(rows) - i} more: type part of a name in `/{self.name} info` to find one.")
                break
            lines.append(line)
            size += len(line) + 1
        await self.reply(interaction, "\n".join(lines) or f"Nothing here yet. Upload a file with `/{self.name} upload`.")

    @app_commands.command(name="info", description="What a file is: the model it was made for, its shape, its training")
    @app_commands.autocomplete(name=names)
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        library = self.library(interaction)
        m = await library.find(interaction.guild_id, interaction.user.id, name)
        head = f"**{m.name}** by {ui.owner_mention(m.owner_id)}" + (f" · shared ({m.status})" if m.shared else " · private")
        await self.reply(interaction, "\n".join([head, *await library.info(m)]))

    # -- choosing --------------------------------------------------------------------------------------------
    @app_commands.command(name="use", description="Apply it to all your /imagine jobs (several at once)")
    @app_commands.describe(name="The file", strength="1 = as trained, 0.5 = half; default 1")
    @app_commands.autocomplete(name=names)
    async def use(
        self,
        interaction: discord.Interaction,
        name: str,
        strength: app_commands.Range[float, STRENGTH_RANGE[0], STRENGTH_RANGE[1]] = 1.0,
    ) -> None:
        entries = await self.library(interaction).use(interaction.guild_id, interaction.user.id, name, strength)
        await self.reply(interaction, f"{self.emoji} `{name}` ×{strength:g} is on. " + self.active_line(entries))

    @app_commands.command(name="off", description="Stop applying one of them, or all")
    @app_commands.describe(name="The one to turn off; empty = all")
    @app_commands.autocomplete(name=names)
    async def off(self, interaction: discord.Interaction, name: str | None = None) -> None:
        entries = await self.library(interaction).off(interaction.guild_id, interaction.user.id, name)
        await self.reply(interaction, self.active_line(entries))

    # -- files -----------------------------------------------------------------------------------------------
    @app_commands.command(name="upload", description="Add a file, private to you until shared", extras={ui.GENERATES: True})
    @app_commands.describe(file="A .safetensors file (hypernetworks and embeddings: or an AUTOMATIC1111 .pt)",
                           name="Its name here (default: from the file)")  # fmt: skip
    async def upload(self, interaction: discord.Interaction, file: discord.Attachment, name: str | None = None) -> None:
        m = await self.library(interaction).upload(interaction.guild_id, interaction.user.id, file, name)
        await self.reply(interaction, f"{self.emoji} `{m.name}` added (private to you). " + self.how_to_use.format(name=m.name))

    @app_commands.command(name="delete", description="Delete one of your files")
    @app_commands.autocomplete(name=names)
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        await self.library(interaction).delete(interaction.guild_id, interaction.user.id, name)
        await self.reply(interaction, f"🗑️ `{name}` deleted.")

    @app_commands.command(name="share", description="Offer one of your files to the whole server (an admin approves)")
    @app_commands.autocomplete(name=names)
    async def share(self, interaction: discord.Interaction, name: str) -> None:
        await self.library(interaction).share(interaction.guild_id, interaction.user.id, name)
        await self.reply(interaction, f"📤 `{name}` waits for an admin's approval (`/admin modules approve`); then everyone here can use it.")
