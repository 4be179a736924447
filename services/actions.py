"""What buttons and reactions on result messages do: reroll, variations, upscales, delete,
cancel, favourites and parameters by DM.  State comes from SQL (the job id in the custom_id or
the message id of a result), so everything works on old messages and after a restart.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from gen_core.metadata import format_parameters
from services import ui
from services.disclosure import shareable_parameters
from services.edit import EDIT_KINDS, remix_params
from services.hypernet import TRAIN_KIND, sample_params
from services.jobs import UserError, new_seed
from services.mix import sweep_params

log = logging.getLogger(__name__)


def derive_params(job: Any, action: str, index: int | None, generation: Any) -> dict[str, Any]:
    """A new job's parameters from a finished job: reroll (new seed), variation or upscale of image `index`."""
    params = dict(job.params)
    params["seed"] = new_seed()
    params.pop("mode", None)
    if action == "reroll":
        return params
    if action == "sweep":  # /mix results: the same seed at several weights between the first two prompts
        return sweep_params(job.params, job.params["seed"])
    images = (job.result or {}).get("images", [])
    if index is None or not 0 <= index < len(images):
        raise UserError("That image no longer exists.")
    params.update(init_image=images[index]["key"], source_job=job.id, source_index=index)
    if action == "var":
        params.update(strength=generation.variation_strength, mode="variation")
        return params
    if action == "up":
        width, height = images[index]["width"] * 2, images[index]["height"] * 2
        params.update(
            width=width // 64 * 64, height=height // 64 * 64, count=1, strength=generation.upscale_strength, mode="upscale"
        )
        return params
    raise UserError(f"Unknown action {action}.")


def is_moderator(member: Any) -> bool:
    perms = getattr(member, "guild_permissions", None)
    return bool(perms and (perms.manage_messages or perms.manage_guild or perms.administrator))


class Actions:
    def __init__(self, services: Any) -> None:
        self.s = services

    async def derive_and_submit(self, job: Any, action: str, index: int | None, user_id: int, guild_id: int, channel_id: int, request_key: str) -> list[Any]:
        if job.kind in EDIT_KINDS:  # re-mix the kept tuned state: no optimisation again
            kind, params = "edit_remix", remix_params(job, action, index)
        elif job.kind == TRAIN_KIND:  # a training's sample again, with the trained module: no training again
            kind, params = "imagine", sample_params(job)
        else:
            kind, params = job.kind, derive_params(job, action, index, self.s.config.generation)
            if "init_image" in params and not await self.s.store.exists(params["init_image"]):
                raise UserError("That image is no longer stored on this server, so it can't be varied or upscaled. 🔄 still rerolls it.")
            area_limit = self.s.config.generation.max_area * (4 if action == "up" else 1)
            if params["width"] * params["height"] > area_limit:
                raise UserError(f"That image is too large to {action} on this server.")
        return await self.s.jobs.submit(
            kind=kind, params_list=[params], guild_id=guild_id, channel_id=channel_id, user_id=user_id, request_key=request_key
        )

    # -- buttons ----------------------------------------------------------------------------------
    async def on_button(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        generating = action in ("reroll", "var", "up", "sweep", "eta")
        if generating:  # acknowledge first: the checks below read SQL
            await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.s.guard(interaction)
            job = await self.s.job_in_guild(job_id, interaction.guild_id)
            if generating:
                jobs = await self.derive_and_submit(
                    job, action, index, interaction.user.id, interaction.guild_id, interaction.channel_id, str(interaction.id)
                )
                await self.s.announce_queued(jobs, interaction=interaction)
            elif action == "delete":
                if interaction.user.id != job.user_id and not is_moderator(interaction.user):
                    raise UserError("Only the person who made this image or a moderator can delete it.")
                await interaction.response.defer()
                await interaction.message.delete()
            elif action == "cancel":
                if interaction.user.id != job.user_id and not is_moderator(interaction.user):
                    raise UserError("Only the person who asked for this job or a moderator can cancel it.")
                if not await self.s.jobs.cancel(job_id, interaction.user.id):
                    raise UserError(f"Job #{job_id} already finished.")
                await interaction.response.edit_message(content=f"🛑 Job #{job_id} cancelled; {job.cost} credits refunded.", view=None, attachments=[])
                self.s.publisher.status.pop(job_id, None)
            else:
                raise UserError("That button is not supported any more.")
        except UserError as exc:
            await ui.refuse(interaction, str(exc))

    # -- reactions ---------------------------------------------------------------------------------
    async def on_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        bot = self.s.bot
        if payload.user_id == bot.user.id or payload.guild_id is None:
            return
        emoji = str(payload.emoji)
        if emoji not in (ui.REROLL, ui.DELETE, ui.FAVOURITE, ui.DM):
            return
        channel = bot.get_channel(payload.channel_id) or await bot.fetch_channel(payload.channel_id)
        job = await self.s.queue.by_message(payload.message_id)
        if job is None:  # posted a moment ago and not yet recorded, or not a result: ask the message
            try:
                message = await channel.fetch_message(payload.message_id)
            except discord.HTTPException:
                return
            # buttons are read only from the bot's own messages: another bot's or a webhook's could name any job
            job_id = ui.job_id_from_message(message) if message.author.id == bot.user.id else None
            job = await self.s.queue.get(job_id) if job_id else None
            if job is None or job.status != "done":
                return
        if job.guild_id != payload.guild_id:
            return
        member = payload.member
        try:
            if await self.s.refusal_for(payload.guild_id, payload.user_id, payload.channel_id):
                return
            if emoji == ui.REROLL:
                jobs = await self.derive_and_submit(
                    job, "reroll", None, payload.user_id, payload.guild_id, payload.channel_id,
                    f"reaction:{payload.message_id}:{payload.user_id}:{new_seed()}",
                )
                status = await channel.send(f"🔄 <@{payload.user_id}> reroll of job #{job.id} queued…")
                await self.s.announce_queued(jobs, message=status)
            elif emoji == ui.DELETE:
                if payload.user_id == job.user_id or is_moderator(member):
                    await channel.get_partial_message(payload.message_id).delete()
            elif emoji == ui.FAVOURITE:
                for img in (job.result or {}).get("images", []):
                    await self.s.images.favourite(payload.guild_id, payload.user_id, img["key"])
            elif emoji == ui.DM:
                user = member or await bot.fetch_user(payload.user_id)
                visible = {m.name for m in await self.s.hypernets.visible(payload.guild_id, payload.user_id)}
                lines = [f"**Job #{job.id}** ({job.kind})"]
                for img in (job.result or {}).get("images", []):
                    shown = shareable_parameters({**job.params, "seed": img["seed"]}, visible)
                    lines.append("```\n" + format_parameters(shown) + "\n```")
                await user.send(ui.clip("\n".join(lines), 2000))
        except UserError as exc:  # answered privately: a refused reaction never posts in the channel
            await self._tell(payload, str(exc))
        except discord.HTTPException as exc:
            log.info("reaction %s on %s failed: %s", emoji, payload.message_id, exc)

    async def _tell(self, payload: discord.RawReactionActionEvent, text: str) -> None:
        """A direct message to the member who reacted; nothing if their DMs are closed."""
        try:
            user = payload.member or await self.s.bot.fetch_user(payload.user_id)
            await user.send(ui.clip(text, 2000))
        except discord.HTTPException as exc:
            log.info("could not DM %s: %s", payload.user_id, exc)

