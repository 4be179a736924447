"""/imagine (text-to-image, or img2img from an upload) and /cost, plus the job buttons, the Remix form and
reactions on result messages."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from gen_core.buckets import FIT_MODES, bucket_choices
from gen_core.samplers import SAMPLERS
from services import ui
from services.edit import EDIT_PRESET_CHOICES, edit_cost_line
from services.jobs import ImagineOptions, Upload

# Option descriptions shared by /imagine and /cost.
DESCRIBE = {
    "prompt": "What to draw. (x) / [x] / (x:1.3) for emphasis, BREAK for a new chunk, {a, b} for variants",
    "negative": "What to avoid",
    "aspect": "A bucket (portrait/landscape/square) or W:H like 2:3",
    "steps": "Denoising steps",
    "cfg": "How closely to follow the prompt (CFG scale, default 7)",
    "sampler": "Sampler",
    "seed": "Seed (image i uses seed+i); empty = random",
    "count": "Number of images (1-4)",
    "clip_skip": "CLIP layer: 1 = last, 2 = penultimate (NovelAI default)",
    "quality": "Prepend the quality tags (default on)",
    "undesired": "Negative-tag preset: heavy, light (default) or none",
    "image": "Start from your picture (PNG, JPEG or WebP; img2img), fitted to the nearest aspect bucket",
    "strength": "With image: how much to change it, 0 = keep it, 1 = redraw it (default 0.7)",
    "noise": "With image: extra noise mixed into it for more new detail, 0-1 (default 0)",
    "fit": "With image: crop it to the bucket (default) or pad it to keep all of it",
}
SAMPLER_CHOICES = [app_commands.Choice(name=s, value=s) for s in SAMPLERS][:25]
UNDESIRED_CHOICES = [app_commands.Choice(name=n, value=n) for n in ("heavy", "light", "none")]
FIT_CHOICES = [app_commands.Choice(name=n, value=n) for n in FIT_MODES]


def options(
    prompt: str, negative, aspect, steps, cfg, sampler, seed, count, clip_skip, quality, undesired, strength=None, noise=None,
    model=None,
) -> ImagineOptions:
    return ImagineOptions(
        prompt=prompt,
        negative=negative,
        aspect=aspect,
        steps=steps,
        cfg=cfg,
        sampler=sampler,
        seed=int(seed) if seed is not None else None,
        count=count or 1,
        clip_skip=clip_skip,
        quality=True if quality is None else quality,
        undesired=undesired or "light",
        strength=strength,
        noise=noise,
        model=model,
    )


class Imagine(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ui.JobButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ui.JobButton)

    @property
    def services(self):
        return self.bot.services

    async def _aspect_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        choices = [app_commands.Choice(name=label, value=value) for label, value in bucket_choices(self.services.jobs.buckets)]
        current = current.strip().lower()
        matching = [c for c in choices if current in c.name.lower() or current in c.value]
        if current and ":" in current and not matching:
            matching = [app_commands.Choice(name=f"Custom ratio {current}", value=current)]
        return matching[:25]

    async def _model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=name, value=name) for name in self.services.models.matching(current)]

    @app_commands.command(
        name="imagine", description="Create images from a text prompt, or from your picture with image:", extras={ui.GENERATES: True}
    )
    @app_commands.describe(**DESCRIBE, model="The model to draw with (default: the server's)")
    @app_commands.choices(sampler=SAMPLER_CHOICES, undesired=UNDESIRED_CHOICES, fit=FIT_CHOICES)
    @app_commands.autocomplete(model=_model_autocomplete)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        negative: str | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        cfg: app_commands.Range[float, 1.0, 30.0] | None = None,
        sampler: str | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        clip_skip: app_commands.Range[int, 1, 12] | None = None,
        quality: bool | None = None,
        undesired: str | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        noise: app_commands.Range[float, 0.0, 1.0] | None = None,
        fit: str | None = None,
        model: str | None = None,
    ) -> None:
        opts = options(
            prompt, negative, aspect, steps, cfg, sampler, seed, count, clip_skip, quality, undesired, strength, noise, model
        )
        upload = None
        if image is not None:  # fitted to the named bucket, else to the one nearest its aspect ratio
            bucket = self.services.jobs.bucket(aspect) if aspect else None
            upload = await self.services.fitted_upload(image, bucket, fit or "crop")
        params_list = self.services.jobs.imagine_params(opts, upload)
        await self.services.submit_from_interaction(interaction, params_list, uploads=[upload.data] if upload else ())

    imagine.autocomplete("aspect")(_aspect_autocomplete)

    @app_commands.command(name="cost", description="What an /imagine would cost, without running it")
    @app_commands.describe(
        **{k: DESCRIBE[k] for k in ("prompt", "aspect", "steps", "count")},
        strength="Price an img2img of your picture at this strength (it denoises strength × steps)",
        edit="Also price an /edit of that size with this preset",
    )
    @app_commands.choices(edit=EDIT_PRESET_CHOICES)
    async def cost(
        self,
        interaction: discord.Interaction,
        prompt: str = "a cat",
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        edit: str | None = None,
    ) -> None:
        opts = options(prompt, None, aspect, steps, None, None, 0, count, None, None, None, strength)
        # with a strength: priced as an img2img of a picture already of the bucket's size
        picture = None if strength is None else Upload("", *self.services.jobs.bucket(aspect), fit="crop")
        params_list = self.services.jobs.imagine_params(opts, picture)
        policy = await self.services.settings.policy(interaction.guild_id or 0)  # the server's multipliers
        total = sum(self.services.jobs.cost(p, policy) for p in params_list)
        balance = await self.services.ledger.balance(interaction.guild_id or 0, interaction.user.id)
        p = params_list[0]
        img2img = f" from a picture at strength {strength:g} ({p.denoised_steps} steps denoised)" if strength is not None else ""
        await interaction.followup.send(
            f"💰 {len(params_list)} job(s) of {p.count} image(s) at {p.width}×{p.height}, {p.steps} steps{img2img} "
            f"would cost **{total}** credits. Your balance: {balance}."
            + (edit_cost_line(self.services.jobs, edit, p, policy) if edit else ""),
            ephemeral=True,
        )

    cost.autocomplete("aspect")(_aspect_autocomplete)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        form = ui.RemixForm.submitted(interaction)  # a Remix form, submitted: routed by its custom_id
        if form is not None:
            await form.handle(interaction)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.services.actions.on_reaction(payload)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self.services.actions.on_reaction_removed(payload)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Imagine(bot))
