"""Job submission: validate options into typed job parameters, price them, enqueue them.

Cogs call this; it knows the queue, the ledger and the configuration but nothing of how a
result is rendered.  Every refusal is a `UserError` whose text goes to the user as is.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from discord import app_commands

from gen_core.buckets import parse_aspect
from gen_core.geometry import Geometry
from gen_core.samplers import SAMPLERS
from services.config import Config
from storage import CostPolicy, InsufficientCredits, JobSpec, QueueFull, compute_cost
from worker.jobs import PARAMS_VERSION, ImagineMode, ImagineParams, JobParams, encode


class UserError(app_commands.AppCommandError):
    """A request the bot refuses; the message says what was wrong and what to do.  Raised anywhere while
    an interaction is handled, it ends as an ephemeral refusal (`services.ui.report_error`)."""


class AccessDenied(UserError):
    """The member may not use the bot here (a ban, a channel rule, a DM, the bot's own permissions)."""


UNDESIRED_PRESETS = ("heavy", "light", "none")
REMOVED_IMAGE = (
    "That image is no longer stored on this server (old images are removed after a while), so it can't be "
    "varied, upscaled or extended. 🔄 still makes the job again from its settings."
)


def _permutation_spans(prompt: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every ``{…}`` group without braces inside and with a comma, left to right
    (one linear scan: a regex for this backtracks quadratically on ``{,,,,…`` without a closing brace)."""
    spans, opened = [], None
    for i, ch in enumerate(prompt):
        if ch == "{":
            opened = i
        elif ch == "}":
            if opened is not None and "," in prompt[opened + 1 : i]:
                spans.append((opened, i + 1))
            opened = None
    return spans


def expand_permutations(prompt: str, limit: int) -> list[str]:
    """Midjourney-style `{a, b}` groups (containing a comma) → one prompt per combination."""
    spans = _permutation_spans(prompt)
    if not spans:
        return [prompt]
    groups = [[part.strip() for part in prompt[start + 1 : end - 1].split(",")] for start, end in spans]
    total = 1
    for g in groups:
        total *= len(g)
    if total > limit:
        raise UserError(f"That prompt expands to {total} prompts; the limit is {limit}. Use fewer `{{a, b}}` options.")
    ends = [0, *(end for _, end in spans)]
    texts = [prompt[a:start] for a, (start, _) in zip(ends, spans, strict=False)] + [prompt[spans[-1][1]:]]
    prompts = []
    for combo in itertools.product(*groups):
        out = texts[0]
        for choice, tail in zip(combo, texts[1:], strict=True):
            out += choice + tail
        prompts.append(out)
    return prompts


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def new_seed() -> int:
    return random.randrange(0, 2**32)


@dataclass
class ImagineOptions:
    prompt: str
    negative: str | None = None
    aspect: str | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    seed: int | None = None
    count: int = 1
    clip_skip: int | None = None
    quality: bool = True
    undesired: str = "light"
    strength: float | None = None  # img2img of an upload: how much to change it (0 = keep, 1 = redraw)
    noise: float | None = None  # img2img of an upload: NovelAI's extra noise (0-1)
    model: str | None = None  # a model of config's [[models]] (None: the server's default)


@dataclass(frozen=True)
class Upload:
    """A member's picture fitted to a bucket (``fit``: "crop" or "pad"): its PNG ``data`` and the image-store
    ``key`` it will have once the request passed every check (`JobService.submit` stores it then)."""

    key: str
    width: int
    height: int
    fit: str
    data: bytes = field(default=b"", repr=False)


def unit_interval(name: str, value: float, meaning: str) -> float:
    """``value`` if it lies in [0, 1]; else a `UserError` that says what the option means."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UserError(f"{name} must be between 0 and 1 ({meaning}); you gave {value}.")
    return value


class JobService:
    def __init__(
        self,
        config: Config,
        geometry: Geometry,
        queue: Any,
        ledger: Any,
        worker: Any = None,
        count_tokens=None,
        rules: Any = None,
        modules: Any = None,
        store: Any = None,
        models: Any = None,
    ) -> None:
        self.config = config
        self.store = store  # storage.ImageStore: where a request's uploads go once it was accepted
        self.models = models  # services.models.Models: the model of each job, checked against the registry
        self.geometry = geometry
        self.modules = modules  # services.modules.Modules: prompt tags, active modules and embeddings, applied in submit()
        self.rules = rules  # services.rules.ServerRules: the server's rules, applied in submit()
        self.queue = queue
        self.ledger = ledger
        self.worker = worker
        self.count_tokens = count_tokens  # set once the engine is loaded
        self.buckets = geometry.buckets(config.generation.max_area)

    # -- parameters ---------------------------------------------------------------------------
    def imagine_params(self, o: ImagineOptions, upload: Upload | None = None) -> list[ImagineParams]:
        """Validate /imagine options into the parameters of one job per expanded prompt; with an
        ``upload``, img2img of that picture at its size, ``o.strength`` and ``o.noise``."""
        prompt = o.prompt.strip()
        if not prompt:
            raise UserError("The prompt is empty. Describe the image you want, e.g. `a cat in a spacesuit`.")
        settings = self.sampling_settings(o)
        if upload is not None:
            strength = self.config.generation.img2img_strength if o.strength is None else o.strength
            settings |= {
                "width": upload.width,
                "height": upload.height,
                "mode": ImagineMode.IMG2IMG,
                "init_image": upload.key,
                "fit": upload.fit,
                "strength": unit_interval("strength", strength, "0 keeps your picture, 1 redraws it"),
                "noise": unit_interval("noise", o.noise or 0.0, "extra noise mixed into your picture"),
            }
        elif o.strength is not None or o.noise is not None:
            raise UserError("`strength` and `noise` apply to a picture: add one with `image:`.")
        self.check_tokens(settings["negative"])
        settings["model"] = o.model or ""  # "": the server's default, chosen at submit
        return [ImagineParams(prompt=full, user_prompt=text, **settings) for full, text in self.prompts(prompt, o.quality)]

    def prompts(self, prompt: str, quality: bool) -> list[tuple[str, str]]:
        """``(what the model sees, what the member typed)`` per expanded `{a, b}` variant, quality tags
        prepended when ``quality``; each checked against the token limit."""
        tags = self.config.generation.quality_tags
        out = []
        for text in expand_permutations(prompt, self.config.limits.max_permutations):
            full = f"{tags}, {text}" if quality and tags else text
            self.check_tokens(full)
            out.append((full, text))
        return out

    def remixed(self, params: ImagineParams, prompt: str, negative: str) -> list[ImagineParams]:
        """``params`` (a variation of a picture) with a member's new prompt and negative: every `{a, b}`
        variant, quality tags as the source job had them, modules chosen again from the new text."""
        prompt = prompt.strip()
        if not prompt:
            raise UserError("The prompt is empty. Describe the picture you want it to become.")
        negative = negative.strip()
        self.check_tokens(negative)
        quality = params.prompt != params.user_prompt  # the source job prepended the quality tags
        return [
            dataclasses.replace(params, prompt=full, user_prompt=text, negative=negative, hypernets=(), loras=(), embeddings=())
            for full, text in self.prompts(prompt, quality)
        ]

    def bucket(self, aspect: str | None) -> tuple[int, int]:
        """The bucket an `aspect` option names (the server's default aspect when empty)."""
        try:
            return parse_aspect(aspect or self.config.generation.default_aspect, self.buckets)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def sampling_settings(self, o: ImagineOptions) -> dict[str, Any]:
        """Validate the options every txt2img-like command shares (all but the prompt) into the keyword
        arguments of its `JobParams`: size, steps, count, CFG, sampler, clip skip, seed and the negative
        prompt with its undesired preset."""
        gen, limits = self.config.generation, self.config.limits
        width, height = self.bucket(o.aspect)
        steps = o.steps or gen.default_steps
        if not 1 <= steps <= limits.max_steps:
            raise UserError(f"Steps must be between 1 and {limits.max_steps} on this server (you asked for {steps}).")
        count = o.count or 1
        if not 1 <= count <= limits.max_count:
            raise UserError(f"You can ask for 1 to {limits.max_count} images at once (you asked for {count}).")
        cfg = gen.default_cfg if o.cfg is None else o.cfg
        if not 1.0 <= cfg <= 30.0:
            raise UserError(f"CFG scale must be between 1 and 30 (you asked for {cfg}).")
        sampler = o.sampler or gen.default_sampler
        if sampler not in SAMPLERS:
            raise UserError(f"Unknown sampler {sampler!r}. Choose one of: {', '.join(SAMPLERS)}.")
        clip_skip = o.clip_skip or self.config.model.clip_skip
        if not 1 <= clip_skip <= 12:
            raise UserError("clip_skip must be between 1 and 12 (2 = NovelAI's penultimate layer).")
        undesired = (o.undesired or "light").lower()
        if undesired not in UNDESIRED_PRESETS:
            raise UserError(f"undesired must be one of {', '.join(UNDESIRED_PRESETS)}.")
        preset = {"heavy": gen.undesired_heavy, "light": gen.undesired_light, "none": ""}[undesired]
        negative = ", ".join(p for p in (preset, (o.negative or "").strip()) if p)
        seed = new_seed() if o.seed is None else o.seed
        if not 0 <= seed < 2**32:
            raise UserError("seed must be between 0 and 4294967295.")
        return {
            "negative": negative,
            "width": width,
            "height": height,
            "steps": steps,
            "cfg": cfg,
            "sampler": sampler,
            "seed": seed,
            "count": count,
            "clip_skip": clip_skip,
            "guidance_min_sigma": gen.guidance_min_sigma,
        }

    def check_tokens(self, text: str, embeddings: dict[str, int] | None = None) -> None:
        """Refuse a text over the token limit; an embedding it names (``embeddings``: name → vectors)
        counts its vectors."""
        if self.count_tokens is None or not text:
            return
        limit = 75 * self.config.model.max_chunks
        n = self.count_tokens(text, limit, embeddings)
        if n > limit:
            raise UserError(f"That prompt is at least {n} tokens; the limit is {limit}. Shorten it (nothing was charged).")

    def cost(self, params: JobParams, policy: CostPolicy | None = None) -> int:
        """The price under `policy` (the guild's, from `Ledger.policy_for`; default: the built-in one)."""
        return compute_cost(
            params.kind,
            params.width,
            params.height,
            # plus optimisation work in sampling-step equivalents (an /edit's Imagic stages 1-2, a training)
            params.steps + params.optimisation_steps,
            # UNet evaluations per output image and step: 2 with CFG (a /mix sweep or composable mix runs more)
            count=params.count * params.unet_passes / 2,
            strength=params.denoised_strength,
            policy=policy,
        )

    # -- submission -------------------------------------------------------------------------------
    async def submit(
        self,
        *,
        params_list: list[JobParams],
        guild_id: int,
        channel_id: int,
        user_id: int,
        request_key: str,
        uploads: Sequence[bytes] = (),
    ) -> list[Any]:
        """Reserve credits and enqueue one job per parameter set (of its kind); all or nothing on credits.

        `request_key` identifies the Discord request (interaction id, or reaction + message):
        a retry of the same request returns the same jobs and charges nothing more.  ``uploads`` are the
        files the parameters name by their content key (`storage.image_store.key_for`): they are stored
        only once every check passed, so a refused request leaves nothing behind.
        """
        params_list, policy, total = await self.check(params_list, guild_id, channel_id, user_id)
        for data in uploads:
            await self.store.put(data)
        jobs = []
        try:
            for i, params in enumerate(params_list):
                spec = JobSpec(
                    kind=params.kind,
                    guild_id=guild_id,
                    channel_id=channel_id,
                    user_id=user_id,
                    interaction_id=f"{request_key}:{i}",
                    params=encode(params),
                    params_version=PARAMS_VERSION,
                    batch_key=params.batch_group(),
                    cost=self.cost(params, policy),
                    model=params.model,
                    area=params.width * params.height,
                )
                job, _created = await self.queue.enqueue(spec)
                jobs.append(job)
        except InsufficientCredits as exc:
            await self._cancel_all(jobs, user_id)
            raise UserError(f"This costs {total} credits and you have {exc.balance}.") from None
        except QueueFull as exc:
            await self._cancel_all(jobs, user_id)
            raise UserError(
                f"You already have {exc.limit} jobs waiting. Wait for them to finish or cancel one."
            ) from None
        if self.worker:
            self.worker.wake()
        return jobs

    async def check(
        self, params_list: list[JobParams], guild_id: int, channel_id: int, user_id: int
    ) -> tuple[list[JobParams], CostPolicy, int]:
        """Everything `submit` checks before it writes: modules, the server's rules and the member's
        credits.  Returns the parameters as they will be queued, the guild's cost policy and the total
        price; raises `UserError`."""
        if self.models is not None:  # the server's default model where the request named none
            default = await self.models.default_for(guild_id)
            params_list = [p if p.model else dataclasses.replace(p, model=default) for p in params_list]
            await self.models.check({p.model for p in params_list})
        if self.modules is not None:  # module tags out of the prompt, the modules into the params
            params_list = await self.modules.apply(guild_id, channel_id, user_id, params_list)
        if self.rules is not None:  # the server's limits, banned words, negatives and NSFW rules
            params_list = await self.rules.apply(guild_id, channel_id, params_list)
            for params in params_list:  # with the server's negatives added
                self.check_tokens(params.negative, {e.name: e.vectors for e in getattr(params, "embeddings", ())})
        self._check_gpu_time(params_list)
        policy = await self.ledger.policy_for(guild_id)
        total = sum(self.cost(p, policy) for p in params_list)
        balance = await self.ledger.balance(guild_id, user_id)
        if total > balance:
            raise UserError(f"This costs {total} credits and you have {balance}. Use `/credits` to see when you get more.")
        return params_list, policy, total

    def _check_gpu_time(self, params_list: list[JobParams]) -> None:
        """Refuse a job whose estimated GPU time is over ``limits.max_job_gpu_s``: its compute (the
        price without any server's multipliers) times the worker's measured seconds per unit."""
        cap = self.config.limits.max_job_gpu_s
        if not cap or self.worker is None:
            return
        seconds = max(self.cost(p) for p in params_list) * self.worker.stats.seconds_per_cost
        if seconds > cap:
            raise UserError(
                f"That job would take about {_duration(seconds)} of GPU time; this bot allows {_duration(cap)} per job. "
                "Use fewer steps, a smaller size or fewer images (nothing was charged)."
            )

    async def _cancel_all(self, jobs: list[Any], actor_id: int) -> None:
        for job in jobs:
            await self.queue.cancel(job.id, actor_id)

    async def cancel(self, job_id: int, actor_id: int) -> bool:
        cancelled = await self.queue.cancel(job_id, actor_id)
        if cancelled and self.worker:
            self.worker.request_cancel(job_id)
        return cancelled
