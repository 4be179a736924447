"""The services a running bot is made of, wired together once: storage, worker, jobs, rendering."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import discord
from PIL import Image

from gen_core.buckets import fit_to_bucket
from gen_core.geometry import Geometry
from gen_core.hypernetwork import ModuleCache
from gen_core.images import ImageInputError, load_image, load_image_rgba, png_bytes
from gen_core.imagic import TunedCache
from gen_core.safety import load_checker
from services import ui
from services.actions import Actions
from services.admin import ServerAdmin
from services.config import Config, ModelConfig
from services.embedding import Embeddings
from services.hypernet import Hypernets
from services.jobs import REMOVED_IMAGE, AccessDenied, JobService, Upload, UserError
from services.lora import Loras
from services.models import Models
from services.modules import Modules
from services.publisher import DiscordPublisher
from services.rules import ServerRules
from services.settings import ServerSettings
from storage import Capability, CostPolicy, Database, ImageStore, JobQueue, Ledger, gc, open_image_store
from storage.image_store import key_for
from worker import Worker, WorkerStats
from worker.announcer import Announcer
from worker.handlers import handlers
from worker.jobs import HypernetTrainParams, InpaintParams, Inputs, JobParams, OutpaintParams
from worker.registry import Registration

log = logging.getLogger(__name__)


def _decode_inputs(params: JobParams, data: list[bytes], cap: int) -> Inputs:
    """`load_inputs`' decoding: training images at their stored size, an inpaint's picture and mask and
    an outpaint's picture as stored, any other job's picture resized to the job's size."""
    images = [load_image(d, max_pixels=cap) for d in data]
    if isinstance(params, HypernetTrainParams):
        return Inputs(train_images=tuple(images))
    if not images:
        return Inputs()
    image = images[0]
    if isinstance(params, InpaintParams):
        return Inputs(image=image, mask=images[1].convert("L"))
    if not isinstance(params, OutpaintParams) and image.size != (params.width, params.height):
        image = image.resize((params.width, params.height), Image.Resampling.LANCZOS)
    return Inputs(image=image)


def _size_and_png(image: Any) -> tuple[tuple[int, int], bytes]:
    return image.size, png_bytes(image)


def default_engine_loader(config: Config, model: ModelConfig | None = None):
    """Load ``model``'s checkpoint (default: the default model; the toy-world model when none is configured)."""
    m = model or config.models[config.default_model]

    def load():
        from gen_core.engine import Engine
        from gen_core.types import EngineConfig

        return Engine.load(
            EngineConfig(
                model_path=str(config.model_path_of(m)),
                device=m.device,
                dtype=m.dtype,
                attention=m.attention,
                channels_last=m.channels_last,
                compile=m.compile,
                clip_skip=m.clip_skip,
                max_chunks=m.max_chunks,
                max_area=config.generation.max_area * 4,
                inpaint_path=m.inpaint_path,
                family=m.family,
                vae=m.vae,
                lora_cache_mb=config.lora.cache_mb,
            )
        )

    return load


def capability(config: Config, model: str, kinds: list[str]) -> Callable[[Any], Capability]:
    """What a worker that loaded ``model`` can run: its handlers' kinds, images up to the engine's area."""
    return lambda engine: Capability(model=model, kinds=tuple(kinds), max_area=config.generation.max_area * 4)


def image_store(config: Config) -> ImageStore:
    """The image store every machine of this bot shares (config ``[storage] images``: a folder or an S3 bucket)."""
    s = config.storage
    return open_image_store(
        config.images, endpoint=s.s3_endpoint, region=s.s3_region, access_key_id=s.s3_access_key_id,
        secret_access_key=s.s3_secret_access_key,
    )  # fmt: skip


async def load_inputs(store: Any, max_pixels: int, params: JobParams) -> Inputs:
    """A job's stored input images, decoded (capped at ``max_pixels``) and resized to the job's size off the
    event loop (`_decode_inputs`)."""
    if isinstance(params, HypernetTrainParams):
        keys: list[str] = list(params.train_images)
    else:
        keys = [k for k in (getattr(params, "init_image", None), getattr(params, "mask", None)) if k]
    data = [await store.get(k) for k in keys]
    return await asyncio.get_running_loop().run_in_executor(None, _decode_inputs, params, data, max_pixels)


class Services:
    def __init__(self, bot: discord.Client, config: Config, engine_loader: Any = None) -> None:
        self.bot = bot
        self.config = config
        self.geometry = Geometry.of_model(config.model_path, config.model.family)
        config.generation.fit_to_model(self.geometry)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        credits = config.credits
        self.policy = CostPolicy(
            start_balance=credits.start_balance,
            topup_floor=credits.topup_floor,
            topup_period_s=credits.topup_period_h * 3600,
            max_queued_per_user=config.limits.max_queued_per_user,
        )
        self.db = Database(config.database_url)
        self.ledger = Ledger(self.db, self.policy)
        self.queue = JobQueue(self.db, self.policy, guild_weights=config.server_weights)
        self.store = image_store(config)
        self.images = self.queue.images
        self.publisher = DiscordPublisher(bot, self.ledger, config.worker.progress_interval_s)
        self.settings = ServerSettings(self.db, config, self.policy)
        self.models = Models(config, self.queue, self.settings)
        self.rules = ServerRules(self)
        self.edit_cache = TunedCache(config.data_dir / "imagic", config.edit.cache_mb * 2**20)
        self.edit_cache.cleanup()
        w = config.worker
        self.announcer = Announcer(
            queue=self.queue,
            publisher=self.publisher,
            announcer_id=lambda: self.registration.worker_id,
            announce_retries=w.announce_retries,
            announce_backoff_s=w.announce_backoff_s,
            announce_backoff_max_s=w.announce_backoff_max_s,
            poll_interval_s=w.poll_interval_s,
        )
        self.worker: Worker | None = None
        if w.embedded:  # one machine: the bot runs the default model's worker itself, and it announces at once
            kinds = handlers(self.edit_cache, ModuleCache())
            self.worker = Worker(
                queue=self.queue,
                store=self.store,
                engine_loader=engine_loader or default_engine_loader(config),
                handlers=kinds,
                load_inputs=functools.partial(load_inputs, self.store, config.limits.max_input_pixels),
                progress=self._show_progress,
                announcer=self.announcer,
                kind="embedded",
                capability=capability(config, config.default_model, list(kinds)),
                max_batch=w.max_batch,
                lease_s=w.lease_s,
                max_attempts=w.max_attempts,
                poll_interval_s=w.poll_interval_s,
                preview_every=w.preview_every,
                screen=self.rules.screen,
            )
        # the bot's place in the registry: its worker's, or its own as a bot that only posts (kind "bot")
        self.registration = self.worker.registration if self.worker else Registration(
            self.queue, kind="bot", lease_s=w.lease_s, max_attempts=w.max_attempts
        )
        self._beat_task: asyncio.Task | None = None
        self.hypernets = Hypernets(self)
        self.loras = Loras(self)
        self.embeddings = Embeddings(self)
        self.modules = Modules(self)
        self.jobs = JobService(
            config, self.geometry, self.queue, self.ledger, self.worker, rules=self.rules, modules=self.modules,
            store=self.store, models=self.models,
        )  # fmt: skip
        self.actions = Actions(self)
        self.admin = ServerAdmin(self)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        mode = self.config.moderation.image_check
        loop = asyncio.get_running_loop()
        self.rules.safety_check = await loop.run_in_executor(None, load_checker, mode, self.config.model_path)
        if self.rules.safety_check is None and mode != "false":
            log.warning("image_check = %r: %s; install the nudenet extra to screen results", mode, self.rules.describe_check())
        else:
            log.info("image safety check: %s", self.rules.describe_check())
        await self.db.upgrade()
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="image-store-sweep")
        await self.queue.name_unnamed(self.config.default_model)  # jobs queued before models had names
        if self.worker is not None:
            await self.worker.start()
            self.jobs.count_tokens = self.worker.engine.count_tokens
        else:
            await self.registration.register()
            self._beat_task = asyncio.create_task(self.registration.keep_alive(), name="bot-heartbeat")
        await self.announcer.start()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.announcer.stop()
        if self.worker is not None:
            await self.worker.stop()
        elif self._beat_task is not None:
            self._beat_task.cancel()
            await asyncio.gather(self._beat_task, return_exceptions=True)
            await self.registration.leave()
        await self.db.close()

    def wake_worker(self) -> None:
        """Jobs may be claimed now (the embedded worker's; remote workers poll)."""
        if self.worker is not None:
            self.worker.wake()

    @property
    def stats(self) -> WorkerStats:
        """Seconds per cost unit for ETAs: the embedded worker's measure, else a default."""
        return self.worker.stats if self.worker is not None else WorkerStats()

    async def _show_progress(self, jobs: list[Any], p: Any) -> None:
        for job in jobs:
            await self.publisher.progress(job, p)

    # -- the image store: garbage collection and retention --------------------------------------
    async def sweep_images(self) -> gc.Files:
        """Remove what requests that never got queued left behind and, with ``storage.keep_images_days``,
        pictures older than that (their history rows and jobs stay); file work runs off the event loop."""
        days = self.config.storage.keep_images_days
        return await gc.collect(self.db, self.store, keep_since=self.db.now() - timedelta(days=days) if days else None)

    async def _sweep_periodically(self) -> None:
        while True:
            try:
                await self.sweep_images()
            except Exception:  # the database or the disk failed for a moment: sweep next time
                log.exception("sweeping the image store failed")
            await asyncio.sleep(self.config.storage.sweep_interval_h * 3600)

    async def stored_image(self, key: str) -> bytes:
        """A result's stored picture; a `UserError` that says so when the retention policy removed it."""
        try:
            return await self.store.get(key)
        except FileNotFoundError:
            raise UserError(REMOVED_IMAGE) from None

    async def download(self, attachment: discord.Attachment) -> bytes:
        """An uploaded file's bytes, refused above the attachment size limit before downloading."""
        limit = self.config.limits.max_attachment_bytes
        if attachment.size > limit:
            raise UserError(f"`{attachment.filename}` is {attachment.size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
        data = await attachment.read()
        if len(data) > limit:
            raise UserError(f"`{attachment.filename}` is {len(data) / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
        return data

    async def read_attachment(self, attachment: discord.Attachment, rgba: bool = False, then: Callable[[Any], Any] | None = None) -> Any:
        """Download and decode an uploaded image (RGB, or RGBA keeping transparency), refusing
        oversized or non-image files clearly; decoding (and ``then``, e.g. a resize) runs off the event loop."""
        data = await self.download(attachment)
        decode = load_image_rgba if rgba else load_image
        limits = self.config.limits

        def work() -> Any:
            image = decode(data, max_bytes=limits.max_attachment_bytes, max_pixels=limits.max_input_pixels)
            return then(image) if then is not None else image

        try:
            return await asyncio.get_running_loop().run_in_executor(None, work)
        except ImageInputError as exc:
            raise UserError(str(exc)) from None

    async def fitted_upload(self, attachment: discord.Attachment, bucket: tuple[int, int] | None = None, fit: str = "crop") -> Upload:
        """An uploaded picture (capped and decoded as `read_attachment`) fitted to ``bucket`` (else the
        bucket nearest its aspect ratio) by ``fit`` ("crop" or "pad") as PNG, not yet stored (`JobService.submit`
        stores it once the request is accepted); resampling and encoding run off the event loop."""
        buckets = [bucket] if bucket else self.jobs.buckets
        size_and_png = await self.read_attachment(attachment, then=lambda image: _size_and_png(fit_to_bucket(image, buckets, fit=fit)))
        (width, height), data = size_and_png
        return Upload(key=key_for(data), width=width, height=height, fit=fit, data=data)

    # -- the ban and channel rules: every command, button and reaction passes here --------------
    async def check_access(
        self,
        *,
        guild_id: int | None,
        user_id: int,
        channel_id: int | None,
        manager: bool = False,
        channel_rules: bool = True,
        bot_permissions: discord.Permissions | None = None,
    ) -> None:
        """Raise `AccessDenied` when this member may not use the bot here: a ban (members who manage the
        server are exempt where nothing is generated, so /admin stays theirs), and where ``channel_rules``
        (a job may start or the bot posts here): a DM, a denied or not-allowed channel, and the bot's own
        channel permissions (``bot_permissions``; a reaction has none to check).  Call it after the
        acknowledgement: it reads SQL."""
        if guild_id is None:
            if channel_rules:
                raise AccessDenied("Image generation works in servers, not in DMs. Use the commands in a server channel.")
            return
        if manager and not channel_rules:
            return
        reason = await self.rules.refusal(guild_id, user_id, channel_id, channel_rules=channel_rules)
        if reason:
            raise AccessDenied(reason)
        perms = bot_permissions
        if channel_rules and perms is not None and not (perms.send_messages and perms.attach_files and perms.view_channel):
            raise AccessDenied(
                "I can't post images in this channel (I need View Channel, Send Messages and Attach Files). "
                "Ask a server admin to allow them, or use another channel."
            )

    # -- submission from an interaction ---------------------------------------------------------
    async def submit_from_interaction(
        self, interaction: discord.Interaction, params_list: list[JobParams], uploads: Sequence[bytes] = ()
    ) -> list[Any]:
        """Reserve credits and enqueue (the interaction is already acknowledged and admitted), then show the
        queue position; a refusal is a `UserError` and costs nothing.  ``uploads``: see `JobService.submit`."""
        jobs = await self.jobs.submit(
            params_list=params_list,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            request_key=str(interaction.id),
            uploads=uploads,
        )
        await self.announce_queued(jobs, interaction=interaction)
        return jobs

    async def announce_queued(self, jobs: list[Any], *, interaction: discord.Interaction | None = None, message: discord.Message | None = None) -> None:
        lines = []
        for job in jobs:
            self.publisher.track(job.id, interaction=interaction, message=message)
            position = await self.queue.position(job.id)
            eta = await self.queue.eta(job.id, self.stats.seconds_per_cost)
            lines.append(f"⏳ Job #{job.id} queued — position {position}, about {eta:.0f} s · {job.cost} credits")
        if note := await self.models.offline_note({job.model for job in jobs}):
            lines.append(note)
        text = "\n".join(lines)
        view = ui.cancel_view(jobs[0].id) if len(jobs) == 1 else None
        try:
            if interaction is not None:
                await interaction.edit_original_response(content=text, view=view)
            elif message is not None:
                await message.edit(content=f"{message.content}\n{text}", view=view)
        except discord.HTTPException as exc:
            log.info("could not show the queue position: %s", exc)
