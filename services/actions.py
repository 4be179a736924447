"""What buttons and reactions on result messages do: reroll, variations, upscales, delete,
cancel, favourites and parameters by DM.  State comes from SQL (the job id in the custom_id or
the message id of a result), so everything works on old messages and after a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import discord

from gen_core.geometry import Geometry
from gen_core.metadata import format_parameters
from services import ui
from services.disclosure import shareable_parameters
from services.edit import remix_params
from services.hypernet import sample_params
from services.jobs import REMOVED_IMAGE, AccessDenied, UserError, new_seed
from services.mix import sweep_params
from worker.jobs import (
    EditParams,
    EditRemixParams,
    HypernetTrainParams,
    ImagineMode,
    ImagineParams,
    InpaintParams,
    JobParams,
    params_of,
)

log = logging.getLogger(__name__)

REROLLS_KEPT = 10_000  # handled 🔄 reactions remembered against a second delivery (a resume replays seconds)


VARY_ACTIONS = ("subtle", "var", "remix")  # Vary (Subtle), Vary (Strong), Remix (strong, with new text)


def derive_params(
    job: Any, params: JobParams, action: str, index: int | None, generation: Any, geometry: Geometry
) -> JobParams:
    """A new job's parameters from a finished ``job``: reroll (new seed), sweep (/mix), variation
    (subtle, strong, or a remix's) or upscale of image ``index`` (/imagine; variations also of
    /inpaint), η re-mix (/edit), or a training's sample again (a trained hypernetwork)."""
    if isinstance(params, EditParams | EditRemixParams):  # re-mix the kept tuned state: no optimisation again
        return remix_params(job.id, params, action, index)
    if isinstance(params, HypernetTrainParams):  # the training's sample again, with the trained module
        return sample_params(params)
    if action == "reroll":
        return dataclasses.replace(params, seed=new_seed())
    if action == "sweep":  # /mix results: the same seed at several weights between the first two prompts
        return sweep_params(params, params.seed)
    imagine = isinstance(params, ImagineParams)
    if action not in (*VARY_ACTIONS, "up") or not (imagine or isinstance(params, InpaintParams)):
        raise UserError("That button is not supported any more.")
    if action == "remix" and not imagine:
        raise UserError("Remix works on /imagine results.")
    images = (job.result or {}).get("images", [])
    if index is None or not 0 <= index < len(images):
        raise UserError("That image no longer exists.")
    source = {"init_image": images[index]["key"], "source_job": job.id, "source_index": index, "seed": new_seed()}
    if action in VARY_ACTIONS:
        strength = generation.vary_subtle_strength if action == "subtle" else generation.vary_strong_strength
        if imagine:
            source |= {"mode": ImagineMode.VARIATION, "fit": None}
        return dataclasses.replace(params, strength=strength, **source)
    if not isinstance(params, ImagineParams):
        raise UserError("That button is not supported any more.")
    width, height = (geometry.snap_down(images[index][side] * 2) for side in ("width", "height"))
    return dataclasses.replace(
        params, width=width, height=height, count=1, strength=generation.upscale_strength, mode=ImagineMode.UPSCALE, **source
    )


class Actions:
    def __init__(self, services: Any) -> None:
        self.services = services
        # (message, user) of 🔄 reactions handled and not removed since: the gateway delivers at least once,
        # so the same reaction can arrive twice across a resume; only removing and adding it again rerolls again
        self._rerolled: dict[tuple[int, int], None] = {}  # insertion-ordered; the oldest go beyond REROLLS_KEPT

    async def job(self, job_id: int, guild_id: int | None) -> Any:
        """A job of this server: ids from buttons and messages are never trusted across servers."""
        job = await self.services.queue.get(job_id)
        if job is None or job.guild_id != guild_id:
            raise UserError(f"Job #{job_id} no longer exists.")
        return job

    async def derive(self, job: Any, action: str, index: int | None) -> JobParams:
        """`derive_params` of ``job`` with the server's strengths, refused when the result would be too large or its
        picture is no longer stored."""
        source = settings_of(job)
        params = derive_params(job, source, action, index, self.services.config.generation, self.services.geometry)
        if params.kind == source.kind:  # a reroll, variation or upscale of the same kind
            key = getattr(params, "init_image", None)
            if key and not await self.services.store.exists(key):
                if action == "reroll":
                    raise UserError("The picture this job started from is no longer stored on this server, so it can't be made again.")
                raise UserError(REMOVED_IMAGE)
            area_limit = self.services.config.generation.max_area * (4 if action == "up" else 1)
            if params.width * params.height > area_limit:
                raise UserError(f"That image is too large to {action} on this server.")
        return params

    async def derive_and_submit(
        self, job: Any, action: str, index: int | None, user_id: int, guild_id: int, channel_id: int, request_key: str,
        remix: tuple[str, str] | None = None,
    ) -> list[Any]:
        """Submit the derived job; a ``remix`` (prompt, negative) replaces the texts (one job per `{a, b}` variant)."""
        params = await self.derive(job, action, index)
        params_list = self.services.jobs.remixed(params, *remix) if remix is not None else [params]
        return await self.services.jobs.submit(
            params_list=params_list, guild_id=guild_id, channel_id=channel_id, user_id=user_id, request_key=request_key
        )

    # -- buttons (acknowledged, admitted and owner-checked by ui.JobButton) ---------------------------------
    async def on_button(self, interaction: discord.Interaction, job_id: int, action: str, index: int | None) -> None:
        job = await self.job(job_id, interaction.guild_id)
        if action in ui.GENERATING_ACTIONS:
            jobs = await self.derive_and_submit(
                job, action, index, interaction.user.id, interaction.guild_id, interaction.channel_id, str(interaction.id)
            )
            await self.services.announce_queued(jobs, interaction=interaction)
        elif action == "remix":  # the form, pre-filled; its submission is `on_remix`
            params = await self.derive(job, action, index)
            await interaction.response.send_modal(ui.remix_modal(job.id, index, params.user_prompt, params.negative))
        elif action == "delete":
            await interaction.message.delete()
        elif action == "cancel":
            if not await self.services.jobs.cancel(job_id, interaction.user.id):
                raise UserError(f"Job #{job_id} already finished.")
            await interaction.edit_original_response(content=f"🛑 Job #{job_id} cancelled; {job.cost} credits refunded.", view=None, attachments=[])
            self.services.publisher.status.pop(job_id, None)
        else:
            raise UserError("That button is not supported any more.")

    async def on_remix(self, interaction: discord.Interaction, job_id: int, index: int) -> None:
        """A submitted Remix form (acknowledged and admitted by `ui.RemixForm`): a strong variation of image
        ``index`` of job ``job_id`` with the form's texts."""
        values = ui.modal_values(interaction)
        jobs = await self.derive_and_submit(
            await self.job(job_id, interaction.guild_id), "remix", index, interaction.user.id, interaction.guild_id, interaction.channel_id,
            str(interaction.id), remix=(values.get("prompt", ""), values.get("negative", "")),
        )  # fmt: skip
        await self.services.announce_queued(jobs, interaction=interaction)

    # -- reactions -----------------------------------------------------------------------------------------
    def on_reaction_removed(self, payload: discord.RawReactionActionEvent) -> None:
        if str(payload.emoji) == ui.REROLL:
            self._rerolled.pop((payload.message_id, payload.user_id), None)

    async def on_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        """A reaction on a result: the same access rules as a command or button (`Services.check_access`);
        a refused member is ignored, any other refusal is told by DM, never in the channel."""
        bot = self.services.bot
        if payload.user_id == bot.user.id or payload.guild_id is None:
            return
        emoji = str(payload.emoji)
        if emoji not in (ui.REROLL, ui.DELETE, ui.FAVOURITE, ui.DM):
            return
        if emoji == ui.REROLL:
            if (payload.message_id, payload.user_id) in self._rerolled:  # delivered again: already handled
                return
            self._rerolled[payload.message_id, payload.user_id] = None
            if len(self._rerolled) > REROLLS_KEPT:
                del self._rerolled[next(iter(self._rerolled))]
        channel = bot.get_channel(payload.channel_id) or await bot.fetch_channel(payload.channel_id)
        try:
            await self.services.check_access(guild_id=payload.guild_id, user_id=payload.user_id, channel_id=payload.channel_id)
            await self._react(payload, emoji, channel)
        except AccessDenied:
            return
        except UserError as exc:  # answered privately: a refused reaction never posts in the channel
            await self._tell(payload, str(exc))
        except discord.HTTPException as exc:
            log.info("reaction %s on %s failed: %s", emoji, payload.message_id, exc)

    async def _tell(self, payload: discord.RawReactionActionEvent, text: str) -> None:
        """A direct message to the member who reacted; nothing if their DMs are closed."""
        try:
            user = payload.member or await self.services.bot.fetch_user(payload.user_id)
            await user.send(ui.clip(text, 2000))
        except discord.HTTPException as exc:
            log.info("could not DM %s: %s", payload.user_id, exc)

    async def _react(self, payload: discord.RawReactionActionEvent, emoji: str, channel: Any) -> None:
        bot = self.services.bot
        job = await self.services.queue.by_message(payload.message_id)
        if job is None:  # posted a moment ago and not yet recorded, or not a result: ask the message
            try:
                message = await channel.fetch_message(payload.message_id)
            except discord.HTTPException:
                return
            # buttons are read only from the bot's own messages: another bot's or a webhook's could name any job
            job_id = ui.job_id_from_message(message) if message.author.id == bot.user.id else None
            job = await self.services.queue.get(job_id) if job_id else None
            if job is None or job.status != "done":
                return
        if job.guild_id != payload.guild_id:
            return
        member = payload.member
        if emoji == ui.REROLL:
            if not _can_post_images(channel):  # refused before anything is charged, privately
                await _tell_privately(
                    member or await self.services.bot.fetch_user(payload.user_id),
                    f"I can't post images in <#{payload.channel_id}> (I need View Channel, Send Messages and "
                    "Attach Files there), so your 🔄 was not queued and nothing was charged.",
                )
                return
            jobs = await self.derive_and_submit(
                job, "reroll", None, payload.user_id, payload.guild_id, payload.channel_id,
                f"reaction:{payload.message_id}:{payload.user_id}:{new_seed()}",
            )
            status = await channel.send(f"🔄 <@{payload.user_id}> reroll of job #{job.id} queued…")
            await self.services.announce_queued(jobs, message=status)
        elif emoji == ui.DELETE:
            if payload.user_id == job.user_id or ui.is_moderator(member):
                await channel.get_partial_message(payload.message_id).delete()
        elif emoji == ui.FAVOURITE:
            for img in (job.result or {}).get("images", []):
                await self.services.images.favourite(payload.guild_id, payload.user_id, img["key"])
        elif emoji == ui.DM:
            user = member or await bot.fetch_user(payload.user_id)
            visible = {m.name for m in await self.services.hypernets.visible(payload.guild_id, payload.user_id)}
            params = settings_of(job)
            lines = [f"**Job #{job.id}** ({job.kind})"]
            for img in (job.result or {}).get("images", []):
                lines.append("```\n" + format_parameters(shareable_parameters(params, img["seed"], visible)) + "\n```")
            await user.send(ui.clip("\n".join(lines), 2000))


def settings_of(job: Any) -> JobParams:
    """The typed parameters of a finished job, or a `UserError` when its owner asked to be forgotten (they were
    erased: `storage.members.forget`)."""
    if not job.params:
        raise UserError("The member who made this asked the bot to forget them, so its settings are gone.")
    return params_of(job)


def _can_post_images(channel: Any) -> bool:
    me = getattr(getattr(channel, "guild", None), "me", None)
    if me is None:
        return True  # nothing cached to judge by: the post itself will tell
    perms = channel.permissions_for(me)
    return perms.view_channel and perms.send_messages and perms.attach_files


async def _tell_privately(user: Any, text: str) -> None:
    try:
        await user.send(text)
    except discord.HTTPException:  # DMs closed: nothing public instead
        log.info("could not DM %s: %s", user.id, text)
