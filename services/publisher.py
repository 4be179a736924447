"""Rendering of queued/running/finished jobs in Discord: progress edits, results, failures.

Progress goes to the job's *status message* — the deferred interaction response while its token
is alive (15 min), or a channel message for jobs started by a reaction — edited at most every
`progress_interval_s`.  Results are always posted as new channel messages (not through the
interaction token, which may have expired), carrying the job id in their buttons, so after a
crash the bot recognises a result it already posted instead of posting it twice: it reads the
channel's history from the moment the job finished, however long ago that was.  Every call that
posts raises when Discord refuses (the worker retries, and in the end refunds and tells the owner
privately).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import discord

from gen_core.types import Progress
from services import ui
from worker.jobs import params_of

log = logging.getLogger(__name__)

TOKEN_LIFETIME_S = 14 * 60  # stop using an interaction token a minute before Discord does
CLOCK_SKEW = timedelta(minutes=5)  # our clock against Discord's: search history from this long before a finish


@dataclass
class StatusTarget:
    """Where a job's progress is shown."""

    interaction: discord.Interaction | None = None
    message: discord.Message | None = None
    created: float = 0.0
    last_edit: float = 0.0

    async def edit(self, **kwargs: Any) -> None:
        if self.interaction is not None and time.monotonic() - self.created < TOKEN_LIFETIME_S:
            await self.interaction.edit_original_response(**kwargs)
        elif self.message is not None:
            await self.message.edit(**kwargs)

    async def delete(self) -> None:
        if self.interaction is not None and time.monotonic() - self.created < TOKEN_LIFETIME_S:
            await self.interaction.delete_original_response()
        elif self.message is not None:
            await self.message.delete()


class DiscordPublisher:
    def __init__(self, bot: discord.Client, ledger: Any, progress_interval_s: float = 3.0) -> None:
        self.bot = bot
        self.ledger = ledger
        self.progress_interval_s = progress_interval_s
        self.status: dict[int, StatusTarget] = {}
        # The buttons under a kind's results where they differ from `ui.result_view`; each feature's cog
        # adds its kinds' views in cog_load and removes them in cog_unload.
        self.result_views: dict[str, Callable[[int, int], discord.ui.View]] = {}

    def result_view(self, kind: str, job_id: int, n_images: int) -> discord.ui.View:
        build = self.result_views.get(kind)
        return build(job_id, n_images) if build else ui.result_view(job_id, n_images)

    # -- status messages ---------------------------------------------------------------------------
    def track(self, job_id: int, *, interaction: discord.Interaction | None = None, message: discord.Message | None = None) -> None:
        self.status[job_id] = StatusTarget(interaction=interaction, message=message, created=time.monotonic())

    async def progress(self, job: Any, p: Progress) -> None:
        target = self.status.get(job.id)
        now = time.monotonic()
        if target is None or (now - target.last_edit < self.progress_interval_s and p.step < p.total):
            return
        target.last_edit = now
        text = f"🎨 **Generating** `{ui.clip(params_of(job).user_prompt, 120)}`\n" \
               f"`{ui.progress_bar(p.step, p.total)}` {p.stage + ' · ' if p.stage else ''}step {p.step}/{p.total}"
        kwargs: dict[str, Any] = {"content": text, "view": ui.cancel_view(job.id)}
        if p.preview is not None:
            buf = io.BytesIO()
            p.preview.save(buf, format="PNG")
            kwargs["attachments"] = [ui.png_file(buf.getvalue(), "preview.png")]
        try:
            await target.edit(**kwargs)
        except discord.HTTPException as exc:
            log.info("progress edit for job %s failed: %s", job.id, exc)
            self.status.pop(job.id, None)

    # -- results ---------------------------------------------------------------------------------
    async def _channel(self, channel_id: int) -> discord.abc.Messageable:
        return self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)

    async def _posted_since(self, channel: discord.abc.Messageable, job: Any, matches: Any) -> int | None:
        """The first message of the bot in `channel` since `job` finished for which `matches(message)`."""
        async for message in channel.history(limit=None, after=job.finished_at - CLOCK_SKEW, oldest_first=True):
            if message.author.id == self.bot.user.id and matches(message):
                return message.id
        return None

    async def find_posted(self, job: Any) -> int | None:
        """The id of the result message (done) or failure notice (failed) of `job` already in its channel
        (crash recovery), searched from the moment the job finished: it holds after any delay."""
        channel = await self._channel(job.channel_id)
        if job.status == "done":
            return await self._posted_since(channel, job, lambda m: ui.job_id_from_message(m) == job.id)
        return await self._posted_since(channel, job, lambda m: _failure_marker(job.id) in m.content)

    async def private_notice(self, job: Any, text: str, *, recovering: bool) -> None:
        """DM the job's owner (nothing public; nothing if their DMs are closed); with `recovering`, not again
        if an earlier process already did."""
        user = self.bot.get_user(job.user_id) or await self.bot.fetch_user(job.user_id)
        dm = user.dm_channel or await user.create_dm()
        if recovering and await self._posted_since(dm, job, lambda m: f"job #{job.id} " in m.content):
            return
        try:
            await dm.send(text)
        except discord.Forbidden:
            log.info("user %s does not take DMs; job %s ends without a word", job.user_id, job.id)

    async def result(self, job: Any, images: list[dict[str, Any]]) -> int:
        store = self.bot.services.store
        files = [ui.png_file(await store.get(img["key"]), f"job{job.id}_{i + 1}_{img['seed']}.png") for i, img in enumerate(images)]
        balance = await self.ledger.balance(job.guild_id, job.user_id)
        params = params_of(job)
        seeds = ", ".join(str(img["seed"]) for img in images)
        eta = getattr(params, "eta", None)
        content = (
            f"<@{job.user_id}> **{ui.clip(params.user_prompt, 300)}**\n"
            f"{params.width}×{params.height} · {params.steps} steps · {params.sampler} · CFG {params.cfg}"
            f" · seed {seeds}" + (f" · η {eta}" if eta is not None else "") + ui.img2img_note(*(job.params.get(k) for k in ("strength", "noise", "fit"))) + "\n"
            f"Cost {job.cost} credits · balance {balance} · job #{job.id}"
        )
        if blurred := sum(1 for img in images if img.get("blurred")):
            content += f"\n🔞 {blurred} of {len(images)} blurred by the image safety check: this is not an age-restricted channel."
        channel = await self._channel(job.channel_id)
        message = await channel.send(
            content=content,
            files=files,
            view=self.result_view(job.kind, job.id, len(images)),
            allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),
        )
        try:
            await message.add_reaction(ui.REROLL)
        except discord.HTTPException:
            log.info("could not add the reroll reaction to %s", message.id)
        await self._close_status(job.id)
        return message.id

    @staticmethod
    def _same_place(a: StatusTarget, b: StatusTarget) -> bool:
        return (a.interaction is not None and a.interaction is b.interaction) or (a.message is not None and a.message is b.message)

    async def failure(self, job: Any, error: str) -> None:
        text = f"❌ <@{job.user_id}> {_failure_marker(job.id)}: {error}\nYour {job.cost} credits were refunded."
        target = self.status.get(job.id)
        try:
            if target is not None:
                await target.edit(content=text, view=None, attachments=[])
                self.status.pop(job.id, None)
                return
        except discord.HTTPException:
            pass
        channel = await self._channel(job.channel_id)
        await channel.send(text, allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]))

    async def cancelled(self, job_id: int) -> None:
        target = self.status.pop(job_id, None)
        if target is not None:
            try:
                await target.edit(content=f"🛑 Job #{job_id} cancelled; credits refunded.", view=None, attachments=[])
            except discord.HTTPException:
                pass

    async def _close_status(self, job_id: int) -> None:
        target = self.status.pop(job_id, None)
        if target is None or any(self._same_place(target, other) for other in self.status.values()):
            return  # gone, or still showing the other jobs of the same request (one per `{a, b}` variant)
        try:
            await target.delete()
        except discord.HTTPException:
            log.info("could not remove the status message of job %s", job_id)


def _failure_marker(job_id: int) -> str:
    return f"job #{job_id} failed"
