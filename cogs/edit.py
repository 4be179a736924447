"""/edit: Imagic text-driven editing of an uploaded image; η and reroll buttons re-mix it cheaply."""

from __future__ import annotations

import functools

import discord
from discord import app_commands
from discord.ext import commands

from gen_core.buckets import fit_to_bucket
from services import ui
from services.edit import EDIT_PRESET_CHOICES, ETA_RANGE, EditOptions, edit_params, register_views
from services.jobs import UserError


class Edit(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @property
    def s(self):
        return self.bot.services

    @app_commands.command(name="edit", description="Edit a picture by describing the result (Imagic)")
    @app_commands.describe(
        image="The picture to edit (PNG, JPEG or WebP)",
        prompt="The picture as it should be, e.g. 'a photo of a pistachio cake'",
        eta="0 = the input, 1 = the text; 0.7 usually works, 0.9+ for anime art (default from the server)",
        preset="fast (default) or quality (slower, closer to the paper)",
        seed="Seed; empty = random",
        negative="What to avoid",
    )
    @app_commands.choices(preset=EDIT_PRESET_CHOICES)
    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        eta: app_commands.Range[float, ETA_RANGE[0], ETA_RANGE[1]] | None = None,
        preset: str | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        negative: str | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.s.guard(interaction)
            picture = await self.s.read_attachment(image, then=functools.partial(fit_to_bucket, buckets=self.s.jobs.buckets))
            options = EditOptions(prompt=prompt, eta=eta, preset=preset or "fast", seed=seed, negative=negative)
            params = edit_params(self.s.jobs, options, *picture.size)
        except UserError as exc:
            await ui.refuse(interaction, str(exc))
            return
        params["init_image"] = await self.s.store_png(picture)
        await self.s.submit_from_interaction(interaction, "edit", [params])


async def setup(bot: commands.Bot) -> None:
    register_views()
    await bot.add_cog(Edit(bot))
