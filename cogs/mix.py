"""/mix: several weighted prompts in one image, as an embedding blend or composable prompts."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from gen_core.mix import MODES
from services import ui
from services.mix import MixOptions, mix_params
from worker.jobs import JobKind

SWEEP = "🎚️"


def mix_result_view(job_id: int, n_images: int) -> discord.ui.View:
    """Reroll, delete and the sweep (same seed, weights 0…1 between the first two prompts)."""
    view = ui.result_view(job_id, n_images, actions=("reroll", "delete"))
    view.add_item(ui.JobButton(job_id, "sweep", label="Sweep", emoji=SWEEP, style=discord.ButtonStyle.primary, row=0))
    return view


class Mix(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.services.publisher.result_views[JobKind.MIX] = mix_result_view

    async def cog_unload(self) -> None:
        self.bot.services.publisher.result_views.pop(JobKind.MIX, None)

    @app_commands.command(name="mix", description="Mix several prompts with weights into one image", extras={ui.GENERATES: True})
    @app_commands.describe(
        prompts="Recipe: `cat:0.7 | kitten:0.3`, `cat::2 kitten::1` or `cat AND kitten :0.5` (missing weight = 1)",
        mode="blend: one averaged prompt embedding (default); composable: one guidance term per prompt",
        negative="What to avoid",
        aspect="A bucket (portrait/landscape/square) or W:H like 2:3",
        seed="Seed (image i uses seed+i); empty = random",
        count="Number of images (1-4)",
        steps="Denoising steps",
        normalize="Scale the weights to add up to 1 (default on); negative weights push away from a prompt",
    )
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m) for m in MODES])
    async def mix(
        self,
        interaction: discord.Interaction,
        prompts: str,
        mode: str | None = None,
        negative: str | None = None,
        aspect: str | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        normalize: bool | None = None,
    ) -> None:
        services = self.bot.services
        options = MixOptions(
            prompts=prompts,
            mode=mode or MODES[0],
            negative=negative,
            aspect=aspect,
            seed=seed,
            count=count or 1,
            steps=steps,
            normalize=True if normalize is None else normalize,
        )
        await services.submit_from_interaction(interaction, [mix_params(services.jobs, options)])


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Mix(bot))
