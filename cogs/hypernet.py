"""/hypernet: hypernetwork style modules — the library's commands (``cogs._modules``) and train."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from cogs._modules import ModuleCommands
from services import ui
from services.modules import check_name
from worker.jobs import JobKind

log = logging.getLogger(__name__)


def train_view(job_id: int, n_images: int) -> discord.ui.View:
    """Under a training result: 🔄 samples again with the module (an /imagine job), ❌ deletes the post."""
    return ui.result_view(job_id, n_images, actions=("reroll", "delete"))


class Hypernet(commands.Cog):
    group = ModuleCommands(
        name="hypernet", description="Hypernetwork style modules", library="hypernets", emoji="🧠",
        how_to_use="Turn it on with `/hypernet use {name}` or write `<hypernet:{name}:0.8>` in a prompt.", active=True,
    )  # fmt: skip

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
