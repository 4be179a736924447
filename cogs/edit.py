"""/edit: Imagic text-driven editing of an uploaded image; η and reroll buttons re-mix it cheaply."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from services import ui
from services.edit import EDIT_KINDS, EDIT_PRESET_CHOICES, ETA_BUTTONS, ETA_RANGE, EditOptions, edit_params


def edit_view(job_id: int, n_images: int) -> discord.ui.View:
    """Under an edit result: reroll, delete, and one button per η of ETA_BUTTONS."""
    view = ui.result_view(job_id, n_images, actions=("reroll", "delete"))
    for eta in ETA_BUTTONS:
        view.add_item(ui.JobButton(job_id, "eta", round(eta * 100), label=f"η {eta}", row=1))
    return view


class Edit(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        for kind in EDIT_KINDS:
            self.bot.services.publisher.result_views[kind] = edit_view

    async def cog_unload(self) -> None:
        for kind in EDIT_KINDS:
            self.bot.services.publisher.result_views.pop(kind, None)

    @property
    def services(self):
        return self.bot.services

    @app_commands.command(name="edit", description="Edit a picture by describing the result (Imagic)", extras={ui.GENERATES: True})
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
        upload = await self.services.fitted_upload(image)
        options = EditOptions(prompt=prompt, eta=eta, preset=preset or "fast", seed=seed, negative=negative)
        params = edit_params(self.services.jobs, options, upload.width, upload.height, init_image=upload.key)
        await self.services.submit_from_interaction(interaction, [params], uploads=[upload.data])


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Edit(bot))
