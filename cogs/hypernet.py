"""/hypernet: hypernetwork style modules — list, info, use/off, upload, train, delete, share."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import discord
from discord import app_commands
from discord.ext import commands

from gen_core import hypernetwork
from services import ui
from services.hypernet import check_name
from services.settings import STRENGTH_RANGE
from worker.jobs import JobKind

log = logging.getLogger(__name__)


def _active_line(entries) -> str:
    if not entries:
        return "No modules are active: /imagine uses the plain model."
    return "Active for your /imagine jobs, in this order: " + ", ".join(f"`{m.name}` ×{s:g}" for m, s in entries)


def train_view(job_id: int, n_images: int) -> discord.ui.View:
    """Under a training result: 🔄 samples again with the module (an /imagine job), ❌ deletes the post."""
    return ui.result_view(job_id, n_images, actions=("reroll", "delete"))


class Hypernet(commands.Cog):
    group = app_commands.Group(name="hypernet", description="Hypernetwork style modules", guild_only=True)

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.services.publisher.result_views[JobKind.HYPERNET_TRAIN] = train_view

    async def cog_unload(self) -> None:
        self.services.publisher.result_views.pop(JobKind.HYPERNET_TRAIN, None)

    @property
    def services(self):
        return self.bot.services

    @property
    def hypernets(self):
        return self.bot.services.hypernets

    async def _names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = await self.hypernets.names(interaction.guild_id, interaction.user.id, current)
        return [app_commands.Choice(name=n, value=n) for n in names]

    @staticmethod
    async def _reply(interaction: discord.Interaction, text: str) -> None:
        await interaction.followup.send(text, ephemeral=True)  # the tree acknowledged the command

    # -- browsing --------------------------------------------------------------------------------------
    @group.command(name="list", description="The modules you can use on this server")
    async def list_(self, interaction: discord.Interaction) -> None:
        rows = await self.hypernets.visible(interaction.guild_id, interaction.user.id)
        active = {m.id: s for m, s in await self.hypernets.active(interaction.guild_id, interaction.user.id)}
        lines = []
        for m in rows:
            state = "⏳ training" if not self.hypernets.ready(m) else f"✅ active ×{active[m.id]:g}" if m.id in active else ""
            owner = "yours" if m.owner_id == interaction.user.id else f"by {ui.owner_mention(m.owner_id)}"
            sharing = f" · shared ({m.status})" if m.shared else ""
            lines.append(f"• `{m.name}` — {owner}{sharing} {state}".rstrip())
        await self._reply(interaction, "\n".join(lines) or "No modules yet. Upload one with `/hypernet upload` or train one with `/hypernet train`.")

    @group.command(name="info", description="What a module is: structure, base model, training")
    @app_commands.autocomplete(name=_names)
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        m = await self.hypernets.find(interaction.guild_id, interaction.user.id, name)
        if not self.hypernets.ready(m):
            await self._reply(interaction, f"`{m.name}` is still training.")
            return
        loop = asyncio.get_running_loop()
        hn = await loop.run_in_executor(None, hypernetwork.load_file, Path(m.path))
        s = hn.structure
        lines = [
            f"**{m.name}** by {ui.owner_mention(m.owner_id)}" + (f" · shared ({m.status})" if m.shared else " · private"),
            f"Layers {' → '.join(f'{x:g}' for x in s.layers)} · activation {s.activation}"
            f" · layer norm {'on' if s.layer_norm else 'off'} · widths {', '.join(map(str, hn.widths))}",
        ]
        await self._reply(interaction, "\n".join([*lines, *hypernetwork.describe_origin(hn.meta)]))

    # -- choosing ------------------------------------------------------------------------------------------
    @group.command(name="use", description="Apply a module to your /imagine jobs (several chain in order)")
    @app_commands.describe(name="The module", strength="1 = as trained, 0.5 = half; default 1")
    @app_commands.autocomplete(name=_names)
    async def use(
        self,
        interaction: discord.Interaction,
        name: str,
        strength: app_commands.Range[float, STRENGTH_RANGE[0], STRENGTH_RANGE[1]] = 1.0,
    ) -> None:
        entries = await self.hypernets.use(interaction.guild_id, interaction.user.id, name, strength)
        await self._reply(interaction, f"🧠 `{name}` ×{strength:g} is on. " + _active_line(entries))

    @group.command(name="off", description="Stop applying one module, or all of them")
    @app_commands.describe(name="The module to turn off; empty = all")
    @app_commands.autocomplete(name=_names)
    async def off(self, interaction: discord.Interaction, name: str | None = None) -> None:
        await self._reply(interaction, _active_line(await self.hypernets.off(interaction.guild_id, interaction.user.id, name)))

    # -- files -------------------------------------------------------------------------------------------
    @group.command(name="upload", description="Add a module: a .safetensors or an AUTOMATIC1111 .pt hypernetwork", extras={ui.GENERATES: True})
    @app_commands.describe(file="The hypernetwork file", name="Its name here (default: from the file)")
    async def upload(self, interaction: discord.Interaction, file: discord.Attachment, name: str | None = None) -> None:
        m = await self.hypernets.upload(interaction.guild_id, interaction.user.id, file, name)
        await self._reply(interaction, f"🧠 Module `{m.name}` added (private to you). Turn it on with `/hypernet use {m.name}`.")

    @group.command(name="delete", description="Delete one of your modules")
    @app_commands.autocomplete(name=_names)
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        await self.hypernets.delete(interaction.guild_id, interaction.user.id, name)
        await self._reply(interaction, f"🗑️ Module `{name}` deleted.")

    @group.command(name="share", description="Offer one of your modules to the whole server (an admin approves)")
    @app_commands.autocomplete(name=_names)
    async def share(self, interaction: discord.Interaction, name: str) -> None:
        await self.hypernets.share(interaction.guild_id, interaction.user.id, name)
        await self._reply(interaction, f"📤 `{name}` waits for an admin's approval (`/admin modules approve`); then everyone here can use it.")

    # -- training ----------------------------------------------------------------------------------------
    @group.command(name="train", description="Train a new module on your images (a GPU job with a cost)", extras={ui.GENERATES: True})
    @app_commands.describe(
        name="The new module's name",
        images="An image, or a .zip of images with same-named .txt captions",
        captions="Captions (tags or text): one for all, or one per image separated by |",
        image2="Another image", image3="Another image", image4="Another image",
        steps="Training steps (default from the server)",
        seed="Seed of the training and its sample (default random): the same images and seed give the same module",
    )  # fmt: skip
    async def train(
        self,
        interaction: discord.Interaction,
        name: str,
        images: discord.Attachment,
        captions: str | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        steps: app_commands.Range[int, 1, 100_000] | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
    ) -> None:
        name = check_name(name)
        pairs = await self.hypernets.training_set(images, [a for a in (image2, image3, image4) if a is not None], captions)
        params, pngs = await self.hypernets.train_params(name, [p[0] for p in pairs], [p[1] for p in pairs], steps, seed)
        await self.hypernets.submit_training(interaction, params, pngs)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Hypernet(bot))
