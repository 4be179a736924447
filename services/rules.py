"""Server rules applied to every request: bans, channel allow/deny, per-guild and per-channel limits,
banned words and regexes, the server negative prompt, NSFW gating and the optional image safety check.

Two hooks carry them to every command, button and reaction: `Services.check_access` asks `refusal()`
(bans, channels) once the interaction is acknowledged, and `JobService.submit` passes every parameter set through `apply()` (limits, words,
negatives, NSFW) before pricing it.  The settings they read (limits, negatives, NSFW rules, channels, banned
words) come typed from `services.settings.ServerSettings`; banned words and NSFW terms arrive as RE2
filters (``services.text_filter``) that match the text the model will see.  Hypernetwork training jobs are
checked against ``max_train_images`` / ``max_train_steps``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFilter

from gen_core.types import GeneratedImage
from services.jobs import UserError
from services.settings import Limits, NsfwRules
from services.text_filter import WordFilter, shown
from storage import moderation
from worker.jobs import HypernetTrainParams, ImagineMode, ImagineParams, JobParams

log = logging.getLogger(__name__)

SafetyCheck = Callable[[Image.Image], bool]
"""An image safety check: True means the image must not be shown in a non-NSFW channel."""



@dataclass(frozen=True)
class Rules:
    """Everything that applies to one request in one channel."""

    limits: Limits
    banned: WordFilter
    negative: str
    nsfw: NsfwRules
    nsfw_channel: bool




def model_prompts(p: JobParams) -> tuple[str, ...]:
    """The texts a job steers the model towards: its prompt (a /mix recipe written out, every part with
    its weight, negative weights included: a sweep renders each part at positive weights, and a negative
    weight in a blend extrapolates the embedding) and a training's every caption (the module learns them)."""
    return (p.prompt, *p.captions) if isinstance(p, HypernetTrainParams) else (p.prompt,)


def _first_match(words: WordFilter, texts: tuple[str, ...]) -> str | None:
    return next((hit for text in texts if (hit := words.first_match(text)) is not None), None)


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def ban_message(reason: str | None) -> str:
    why = f" ({reason})" if reason else ""
    return f"You are banned from using this bot on this server{why}. Ask a server admin if you think this is a mistake."


def blurred(image: GeneratedImage) -> GeneratedImage:
    """The image made unrecognisable (what a failed safety check posts instead), saying so in its metadata."""
    radius = max(image.image.size) / 8
    return dataclasses.replace(
        image,
        image=image.image.filter(ImageFilter.GaussianBlur(radius)),
        parameters={**image.parameters, "Safety check": "blurred"},
    )


class ServerRules:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.safety_check: SafetyCheck | None = None  # set at start from moderation.image_check (gen_core.safety)
        self._reported: set[tuple[int, str]] = set()  # disabled regexes already written to the audit log

    @property
    def db(self) -> Any:
        return self.services.db

    def describe_check(self) -> str:
        """Which image check is active, in words (start-up log, `/admin nsfw`)."""
        check = self.safety_check
        if check is None:
            return "no image check is active: flagged results cannot be blurred (see moderation.image_check)"
        name = getattr(check, "name", None) or getattr(check, "__name__", type(check).__name__)
        return f"{name} is active"

    # -- reading the rules -----------------------------------------------------------------------
    def is_nsfw_channel(self, channel_id: int | None) -> bool:
        channel = self.services.bot.get_channel(channel_id) if channel_id else None
        return bool(getattr(channel, "nsfw", False))

    async def in_channel(self, guild_id: int, channel_id: int | None) -> Rules:
        guild, channel = await self.services.settings.in_channel(guild_id, channel_id)
        return Rules(
            limits=guild.limits_in(channel),
            banned=await self._report_disabled(guild_id, guild.banned),
            negative=guild.negative,
            nsfw=guild.nsfw,
            nsfw_channel=self.is_nsfw_channel(channel_id),
        )

    async def _report_disabled(self, guild_id: int, banned: WordFilter) -> WordFilter:
        """``banned``, whose stored regexes RE2 cannot run (written before it was the engine) are left out:
        each is logged and recorded once per run in the audit log (actor 0: the bot); `/admin words list`
        shows them."""
        for entry, reason in banned.disabled:
            if (guild_id, entry) not in self._reported:
                self._reported.add((guild_id, entry))
                log.warning("guild %s: banned regex %r disabled: %s", guild_id, entry, reason)
                await moderation.audit(self.db, guild_id, 0, "words.disabled", details={"word": entry, "reason": reason})
        return banned

    # -- the checks ------------------------------------------------------------------------------
    async def refusal(self, guild_id: int, user_id: int, channel_id: int | None, *, channel_rules: bool = True) -> str | None:
        """Why this member may not use the bot here (a ban; with ``channel_rules`` a denied or not-allowed
        channel), or None.  Only `Services.check_access` asks."""
        ban, channels = await self.services.settings.access(guild_id, user_id)
        if ban is not None and (ban.expires_at is None or ban.expires_at > self.db.now()):
            return ban_message(ban.reason)
        if not channel_rules:
            return None
        here = next((c for c in channels if c.channel_id == channel_id), None)
        if here is not None and not here.enabled:
            return "The server admins turned the bot off in this channel. Use it in another channel."
        allowed = [c.channel_id for c in channels if c.enabled and c.allowed]
        if allowed and channel_id not in allowed:
            where = ", ".join(f"<#{c}>" for c in allowed[:10])
            return f"On this server the bot works only in {where}. Try it there."
        return None

    async def apply(self, guild_id: int, channel_id: int | None, params_list: list[JobParams]) -> list[JobParams]:
        """Check every parameter set against the server's rules; return them with the server's negatives
        added. Raises `UserError` with what was wrong and what to do."""
        rules = await self.in_channel(guild_id, channel_id)
        return [self._apply_one(rules, p) for p in params_list]

    def _apply_one(self, rules: Rules, p: JobParams) -> JobParams:
        lim = rules.limits
        if p.steps > lim.max_steps:
            raise UserError(f"This server allows at most {lim.max_steps} steps here (you asked for {p.steps}).")
        upscale = isinstance(p, ImagineParams) and p.mode == ImagineMode.UPSCALE
        if p.width * p.height // (4 if upscale else 1) > lim.max_area:
            raise UserError(
                f"{p.width}×{p.height} is larger than this server allows here ({lim.max_area} pixels). "
                "Choose a smaller aspect."
            )
        if p.count > lim.max_count:
            raise UserError(f"This server allows at most {lim.max_count} images per request here (you asked for {p.count}).")
        if isinstance(p, HypernetTrainParams):
            if len(p.train_images) > lim.max_train_images:
                raise UserError(f"This server allows at most {lim.max_train_images} training images (you gave {len(p.train_images)}).")
            if p.train_steps > lim.max_train_steps:
                raise UserError(f"This server allows at most {lim.max_train_steps} training steps (you asked for {p.train_steps}).")
        prompts = model_prompts(p)
        if (hit := _first_match(rules.banned, prompts)) is not None:
            raise UserError(f"Your prompt contains `{shown(hit)}`, which is banned on this server. Rephrase it (nothing was queued).")
        if (hit := rules.banned.first_match(self._members_negative(rules, p.negative))) is not None:  # it is published
            raise UserError(f"Your negative prompt contains `{shown(hit)}`, which is banned on this server. Rephrase it (nothing was queued).")
        extra = [rules.negative]
        if not rules.nsfw_channel:  # a negative prompt steers away from its words: NSFW terms are looked for in prompts
            if (hit := _first_match(rules.nsfw.terms, prompts)) is not None:
                raise UserError(
                    f"`{hit}` is NSFW content, which this server allows only in age-restricted channels. "
                    "Use an age-restricted (NSFW) channel, or rephrase."
                )
            extra.append(rules.nsfw.negative)
        negative = _join(p.negative, *(e for e in extra if e and e not in p.negative))
        return dataclasses.replace(p, screen=not rules.nsfw_channel and rules.nsfw.image_check, negative=negative)

    def _members_negative(self, rules: Rules, negative: str) -> str:
        """``negative`` without what the bot adds to it (the undesired presets, the server's negative and the
        NSFW negative, which a derived job carries): the part the member wrote."""
        gen = self.services.config.generation
        for added in (gen.undesired_heavy, gen.undesired_light, rules.negative, rules.nsfw.negative):
            if added:
                negative = negative.replace(added, " ")
        return negative

    # -- actions on users and results --------------------------------------------------------------
    async def ban(self, guild_id: int, user_id: int, actor_id: int, reason: str | None) -> list[Any]:
        """Ban the member and cancel (refunding) their waiting and running jobs here; returns those jobs."""
        await moderation.ban(self.db, guild_id, user_id, actor_id, reason)
        return await self.cancel_jobs(guild_id, user_id, actor_id)

    async def cancel_jobs(self, guild_id: int, user_id: int, actor_id: int) -> list[Any]:
        """Cancel (refunding) the member's waiting and running jobs here; returns those jobs."""
        cancelled = []
        for job in await self.services.queue.list(guild_id=guild_id, user_id=user_id):
            if await self.services.jobs.cancel(job.id, actor_id):
                self.services.publisher.status.pop(job.id, None)
                cancelled.append(job)
        return cancelled

    async def screen(self, params: JobParams, images: list[GeneratedImage]) -> list[GeneratedImage]:
        """Run the installed safety check on results bound for a non-NSFW channel; blur what it flags."""
        return await screen_images(self.safety_check, self.services.worker.gpu, params, images)


async def screen_images(
    check: SafetyCheck | None, executor: Any, params: JobParams, images: list[GeneratedImage]
) -> list[GeneratedImage]:
    """``check`` (on ``executor``, the GPU thread) on results bound for a non-NSFW channel; what it flags is
    blurred. The bot's embedded worker and ``python -m worker`` both screen this way."""
    if check is None or not params.screen:
        return images
    loop = asyncio.get_running_loop()
    flags = await loop.run_in_executor(executor, lambda: [check(img.image) for img in images])
    return [blurred(img) if flagged else img for img, flagged in zip(images, flags, strict=True)]
