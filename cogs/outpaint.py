"""/outpaint (extend a picture in any direction) and /inpaint (repaint a masked region).

An outpaint result carries four candidates with P1–P4 buttons: picking one posts it large with
⬅ ➡ ⬆ ⬇ and zoom-out buttons that continue from it in one click (chaining).  Those buttons are
:class:`OutpaintButton` dynamic items (``outpaint:<job>:<action>:<index>``), restart-safe like the
job buttons.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from gen_core.outpaint import FILLS
from services import ui
from services.jobs import UserError
from services.outpaint import DIRECTION_ACTIONS, OutpaintService
from worker.jobs import JobKind

DIRECTION_CHOICES = [
    app_commands.Choice(name=name, value=value)
    for name, value in (
        ("⬅ left", "left"),
        ("➡ right", "right"),
        ("⬆ up", "up"),
        ("⬇ down", "down"),
        ("zoom out ×1.5", "zoom1.5"),
        ("zoom out ×2", "zoom2"),
    )
]
FILL_CHOICES = [app_commands.Choice(name=f, value=f) for f in FILLS]
DIRECTION_BUTTONS = (("left", "⬅"), ("right", "➡"), ("up", "⬆"), ("down", "⬇"), ("zoom", "🔍"))


class OutpaintButton(ui.CheckedItem, discord.ui.DynamicItem[discord.ui.Button], template=r"outpaint:(?P<job>[0-9]+):(?P<action>[a-z]+):(?P<index>[0-9]+)"):
    """P1–P4 (pick) under an outpaint result, and the directional buttons under a picked image.  Anyone
    who may use the bot here may continue anyone's outpainting: no ownership check."""

    def __init__(self, job_id: int, action: str, index: int, **button: Any) -> None:
        self.job_id, self.action, self.index = job_id, action, index
        super().__init__(discord.ui.Button(custom_id=f"outpaint:{job_id}:{action}:{index}", **button))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any):
        return cls(int(match["job"]), match["action"], int(match["index"]))

    async def acknowledge(self, interaction: discord.Interaction) -> None:
        if self.action in DIRECTION_ACTIONS:  # a new job: the answer is its queue position
            await interaction.response.defer(ephemeral=True, thinking=True)
        else:  # a pick posts the image in the channel
            await interaction.response.defer()

    async def run(self, interaction: discord.Interaction) -> None:
        job = await interaction.client.services.actions.job(self.job_id, interaction.guild_id)
        if job.kind != JobKind.OUTPAINT or not job.result:
            raise UserError(f"Outpaint job #{self.job_id} no longer exists.")
        if self.action == "pick":
            await pick(interaction, job, self.index)
        elif self.action in DIRECTION_ACTIONS:
            await extend(interaction, job, self.index, self.action)
        else:
            raise UserError("That button is not supported any more.")


def outpaint_result_view(job_id: int, n_images: int) -> discord.ui.View:
    view = ui.result_view(job_id, n_images, actions=("reroll", "delete"))
    for i in range(n_images):
        view.add_item(OutpaintButton(job_id, "pick", i, label=f"P{i + 1}", row=1))
    return view


def inpaint_result_view(job_id: int, n_images: int) -> discord.ui.View:
    """Reroll, delete and Vary (Subtle/Strong) of the repainted image; no Remix or upscale."""
    return ui.result_view(job_id, n_images, actions=("reroll", "delete", "subtle", "var"))


def picked_view(job_id: int, index: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action, emoji in DIRECTION_BUTTONS:
        view.add_item(OutpaintButton(job_id, action, index, emoji=emoji, style=discord.ButtonStyle.primary))
    return view


async def pick(interaction: discord.Interaction, job: Any, index: int) -> None:
    """Post candidate ``index`` large, with buttons to continue outpainting from it."""
    images = job.result.get("images", [])
    if not 0 <= index < len(images):
        raise UserError("That image no longer exists.")
    image = images[index]
    data = await interaction.client.services.stored_image(image["key"])
    await interaction.followup.send(
        f"<@{interaction.user.id}> picked P{index + 1} of job #{job.id} ({image['width']}×{image['height']}, "
        f"seed {image['seed']}). Continue with ⬅ ➡ ⬆ ⬇ or 🔍 zoom out.",
        file=ui.png_file(data, f"pick{job.id}_{index + 1}_{image['seed']}.png"),
        view=picked_view(job.id, index),
        allowed_mentions=discord.AllowedMentions.none(),
    )


async def extend(interaction: discord.Interaction, job: Any, index: int, action: str) -> None:
    """A new outpaint job continuing from candidate ``index`` of ``job``."""
    services = interaction.client.services
    params, plan, uploads = await OutpaintService(services).continue_params(job, index, action)
    await services.submit_from_interaction(interaction, [params], uploads)
    await note_downscaled(interaction, plan.downscaled, plan.original_size)


async def note_downscaled(interaction: discord.Interaction, downscaled: bool, size: tuple[int, int]) -> None:
    if downscaled:
        await interaction.followup.send(
            f"ℹ️ Your image was scaled down to {size[0]}×{size[1]} to stay within this server's size limit.",
            ephemeral=True,
        )


class Outpaint(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.service = OutpaintService(bot.services)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(OutpaintButton)
        self.services.publisher.result_views.update({JobKind.OUTPAINT: outpaint_result_view, JobKind.INPAINT: inpaint_result_view})

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(OutpaintButton)
        for kind in (JobKind.OUTPAINT, JobKind.INPAINT):
            self.services.publisher.result_views.pop(kind, None)

    @property
    def services(self):
        return self.bot.services

    @app_commands.command(name="outpaint", description="Extend a picture beyond its borders (four candidates)", extras={ui.GENERATES: True})
    @app_commands.describe(
        image="The picture to extend",
        direction="Which side to grow, or zoom out",
        prompt="What the new area should show",
        pixels="How far to extend (ignored for zoom out)",
        negative="What to avoid",
        seed="Seed (candidate i uses seed+i); empty = random",
    )
    @app_commands.choices(direction=DIRECTION_CHOICES)
    async def outpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        direction: str,
        prompt: str,
        pixels: app_commands.Range[int, 64, 1024] | None = None,
        negative: str | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
    ) -> None:
        picture = await self.services.read_attachment(image)
        params_list, plan, uploads = await self.service.outpaint_params(picture, direction, pixels, prompt, negative, seed)
        await self.services.submit_from_interaction(interaction, params_list, uploads)
        await note_downscaled(interaction, plan.downscaled, plan.original_size)

    @app_commands.command(name="inpaint", description="Repaint a region of a picture (mask: white = repaint)", extras={ui.GENERATES: True})
    @app_commands.describe(
        image="The picture; without a mask, its transparent area is repainted",
        prompt="What the repainted area should show",
        mask="Same size as the image: white = repaint, black = keep",
        negative="What to avoid",
        strength="How much the masked area changes (0-1, default from the server)",
        fill="What the masked area starts from: original, noise or blur",
        mask_blur="Feather of the mask's edge in pixels (default from the server)",
        seed="Seed (image i uses seed+i); empty = random",
        count="Number of images (1-4)",
    )
    @app_commands.choices(fill=FILL_CHOICES)
    async def inpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None = None,
        negative: str | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
        fill: str | None = None,
        mask_blur: app_commands.Range[int, 0, 64] | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
    ) -> None:
        picture = await self.services.read_attachment(image, rgba=True)
        mask_image = await self.services.read_attachment(mask, rgba=True) if mask is not None else None
        params_list, scaled_to, uploads = await self.service.inpaint_params(
            picture, mask_image, prompt, negative, strength, fill, seed, count, mask_blur
        )
        await self.services.submit_from_interaction(interaction, params_list, uploads)
        if scaled_to:
            await note_downscaled(interaction, True, scaled_to)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Outpaint(bot))
