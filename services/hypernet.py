"""Hypernetwork modules for members: upload, choose, apply to /imagine jobs, train, share, delete.

Files live under ``<data_dir>/hypernets/<guild>/`` in the native ``.safetensors`` form (an uploaded
A1111 ``.pt`` is converted once, at upload, so the worker never reads a pickle).  A member's active
modules are a server setting of theirs (`services.settings.ServerSettings.set_hypernets`).  /imagine jobs
carry what they use as ``ImagineParams.hypernets``; rerolls and variations copy it, and each module is
looked up again for the member who asks (`Hypernets.apply`).

A training job (``JobKind.HYPERNET_TRAIN``) reserves its module name at submission: the row exists at
once, its file appears when training finishes; rows of trainings that failed or were cancelled are
dropped the next time modules are listed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
from PIL import Image

from gen_core import hypernetwork
from gen_core.archives import ArchiveError, ArchiveLimits, open_zip, read_member
from gen_core.buckets import nearest_bucket
from gen_core.images import ImageInputError, load_image, open_image, png_bytes
from gen_core.prompts import PromptError, strip_extra_networks
from services import ui
from services.jobs import UserError, new_seed
from services.settings import ActiveHypernet, check_strength
from storage import ModuleStatus, hypernetworks
from storage.image_store import key_for
from worker.jobs import HypernetTrainParams, HypernetUse, ImagineParams, JobParams, sampling_fields

NAME = re.compile(r"^[\w.-]{1,64}$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_TRAINING_DONE = ("failed", "cancelled")


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise UserError("Module names are 1-64 letters, digits, `_`, `-` or `.` (no spaces), e.g. `anime-style`.")
    return name


@dataclass(frozen=True)
class TrainingCaps:
    """What one training request may hand the bot: images, pixels per image and in total, bytes per file."""

    max_images: int
    max_pixels: int
    max_total_pixels: int
    max_bytes: int

    @property
    def archive(self) -> ArchiveLimits:
        # an image and its caption per entry, plus folders; PNGs do not compress, captions a little
        return ArchiveLimits(max_members=2 * self.max_images + 64, max_member_bytes=self.max_bytes,
                             max_total_bytes=4 * self.max_bytes, max_ratio=100.0)  # fmt: skip


def decode_training_images(files: list[tuple[str, bytes]], caps: TrainingCaps, buckets: list[tuple[int, int]]) -> list[Image.Image]:
    """``(name, bytes)`` image files decoded and scaled to the size training uses.  Every header is
    read, and the pixels per image and in total checked, before the first image is decoded.
    Blocking (seconds for large photos): run it off the event loop."""
    total = 0
    for name, data in files:
        try:
            width, height = open_image(data, max_bytes=caps.max_bytes, max_pixels=caps.max_pixels).size
        except ImageInputError as exc:
            raise UserError(f"`{name}`: {exc}.") from None
        total += width * height
    if total > caps.max_total_pixels:
        raise UserError(
            f"The training images hold {total / 1e6:.1f} MP in total; the limit is {caps.max_total_pixels / 1e6:.1f} MP. "
            "Use fewer or smaller images."
        )
    out = []
    for name, data in files:
        try:
            image = load_image(data, max_bytes=caps.max_bytes, max_pixels=caps.max_pixels)
        except ImageInputError as exc:
            raise UserError(f"`{name}`: {exc}.") from None
        out.append(hypernetwork.fit_for_training(image, buckets))
    return out


def read_training_zip(data: bytes, caps: TrainingCaps, buckets: list[tuple[int, int]]) -> list[tuple[Image.Image, str | None]]:
    """``(image at training size, caption or None)`` pairs from a zip of ``name.png`` + ``name.txt``
    files; the archive is checked before anything is unpacked.  Blocking: run it off the event loop."""
    try:
        archive = open_zip(data, caps.archive)
        entries = {Path(i.filename): i for i in archive.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX")}
        images = sorted(p for p in entries if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not images:
            raise UserError("The zip holds no images (.png, .jpg, .webp), each with an optional .txt caption of the same name.")
        if len(images) > caps.max_images:
            raise UserError(f"The zip holds {len(images)} images; this server allows at most {caps.max_images} training images.")
        files = [(path.name, read_member(archive, entries[path])) for path in images]
        captions = []
        for path in images:
            caption_file = entries.get(path.with_suffix(".txt"))
            caption = read_member(archive, caption_file).decode("utf-8", "replace").strip() if caption_file else ""
            captions.append(caption or None)
    except ArchiveError as exc:
        raise UserError(f"{exc}.") from None
    return list(zip(decode_training_images(files, caps, buckets), captions, strict=True))


class Hypernets:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.config = services.config.hypernet
        self.directory = services.config.data_dir / "hypernets"
        self._widths: set[int] | None = None

    # -- look-ups -------------------------------------------------------------------------------
    @property
    def widths(self) -> set[int]:
        if self._widths is None:
            if self.services.worker is None:
                raise UserError("Uploaded modules are checked against the model, and this bot runs none itself "
                                "(`[worker] embedded = false`). Train a module with `/hypernet train` instead.")
            self._widths = hypernetwork.model_widths(self.services.worker.engine.unet)
        return self._widths

    @staticmethod
    def ready(module: Any) -> bool:
        return Path(module.path).is_file()

    async def visible(self, guild_id: int, user_id: int) -> list[Any]:
        """The modules this member may see; rows of trainings that failed or were cancelled are dropped."""
        rows = []
        for module in await hypernetworks.visible(self.services.db, guild_id, user_id):
            job_id = (module.meta or {}).get("training_job")
            if job_id and not self.ready(module):
                job = await self.services.queue.get(job_id)
                if job is None or str(job.status) in _TRAINING_DONE:
                    await hypernetworks.delete(self.services.db, module.id)
                    continue
            rows.append(module)
        return rows

    async def find(self, guild_id: int, user_id: int, name: str, *, owned: bool = False) -> Any:
        module = next((m for m in await self.visible(guild_id, user_id) if m.name == name), None)
        if module is None:
            raise UserError(f"There is no module `{name}` you can use here. See `/hypernet list`.")
        if owned and module.owner_id != user_id:
            raise UserError(f"`{name}` belongs to {ui.owner_mention(module.owner_id)}; only its owner can do that.")
        return module

    async def names(self, guild_id: int, user_id: int, current: str) -> list[str]:
        current = current.lower()
        return [m.name for m in await self.visible(guild_id, user_id) if current in m.name.lower()][:25]

    # -- the member's active modules ----------------------------------------------------------------
    async def active(self, guild_id: int, user_id: int) -> list[tuple[Any, float]]:
        chosen = (await self.services.settings.guild(guild_id)).hypernets.get(user_id, ())
        by_id = {m.id: m for m in await self.visible(guild_id, user_id)}
        return [(by_id[a.module_id], a.strength) for a in chosen if a.module_id in by_id]

    async def _set_active(self, guild_id: int, user_id: int, entries: list[tuple[Any, float]]) -> None:
        await self.services.settings.set_hypernets(guild_id, user_id, [ActiveHypernet(m.id, s) for m, s in entries])

    async def use(self, guild_id: int, user_id: int, name: str, strength: float) -> list[tuple[Any, float]]:
        module = await self.find(guild_id, user_id, name)
        if not self.ready(module):
            raise UserError(f"`{name}` is still training. Use it once its sample image is posted.")
        entries = [(m, s) for m, s in await self.active(guild_id, user_id) if m.id != module.id]
        entries.append((module, strength))
        await self._set_active(guild_id, user_id, entries)
        return entries

    async def off(self, guild_id: int, user_id: int, name: str | None) -> list[tuple[Any, float]]:
        entries = [(m, s) for m, s in await self.active(guild_id, user_id) if name is not None and m.name != name]
        await self._set_active(guild_id, user_id, entries)
        return entries

    # -- jobs --------------------------------------------------------------------------------------
    async def apply(self, guild_id: int, user_id: int, params_list: list[JobParams]) -> list[JobParams]:
        """Strip ``<hypernet:name:strength>`` tags from /imagine prompts and record the modules each job
        uses: the tagged ones, else the member's active ones.  Jobs derived from another job (🔄, V, U,
        a training's sample) carry its modules: each is looked up again for this member, who may use only
        what they can see (their own, or shared and approved), at its current file."""
        out = []
        for params in params_list:
            if isinstance(params, ImagineParams):
                if params.hypernets:
                    chosen = await self._reused(guild_id, user_id, params.hypernets)
                else:
                    params, tags = self._strip_tags(params)
                    chosen = [(await self.find(guild_id, user_id, n), check_strength(s)) for n, s in tags]
                    chosen = chosen or await self.active(guild_id, user_id)
                for module, _ in chosen:
                    if not self.ready(module):
                        raise UserError(f"`{module.name}` is still training. Use it once its sample image is posted.")
                uses = tuple(HypernetUse(name=m.name, path=m.path, strength=s) for m, s in chosen)
                params = dataclasses.replace(params, hypernets=uses)
            out.append(params)
        return out

    async def _reused(self, guild_id: int, user_id: int, uses: tuple[HypernetUse, ...]) -> list[tuple[Any, float]]:
        """The modules a derived job reuses, looked up by name among those this member can see."""
        visible = {m.name: m for m in await self.visible(guild_id, user_id)}
        hidden = next((use.name for use in uses if use.name not in visible), None)
        if hidden is not None:
            raise UserError(
                f"That image was made with the module `{hidden}`, which you can't use here "
                "(it is private to its owner, not approved, or gone). Nothing was charged."
            )
        return [(visible[use.name], use.strength) for use in uses]

    @staticmethod
    def _strip_tags(params: ImagineParams) -> tuple[ImagineParams, list[tuple[str, float]]]:
        try:
            prompt, tags = strip_extra_networks(params.prompt)
            user_prompt, _ = strip_extra_networks(params.user_prompt)
        except PromptError as exc:
            raise UserError(str(exc)) from None
        other = [f"<{k}:{n}>" for k, n, _ in tags if k != "hypernet"]
        if other:
            raise UserError(f"{', '.join(other)}: only `<hypernet:name:strength>` tags are supported here.")
        return dataclasses.replace(params, prompt=prompt, user_prompt=user_prompt), [(name, weight) for _, name, weight in tags]

    # -- files ---------------------------------------------------------------------------------------
    async def upload(self, guild_id: int, user_id: int, attachment: discord.Attachment, name: str | None) -> Any:
        """Check, convert and register an uploaded module; its file is written only once it was
        accepted, and removed again if registering it fails."""
        limit = self.config.max_file_mb * 2**20
        if attachment.size > limit:
            raise UserError(f"`{attachment.filename}` is {attachment.size / 2**20:.0f} MB; the limit is {self.config.max_file_mb} MB.")
        data = await attachment.read()
        widths = self.widths

        def convert() -> hypernetwork.Hypernetwork:  # parsing a large file takes a moment: not on the event loop
            hn = hypernetwork.load_bytes(data, attachment.filename)
            hn.check_fits(widths)
            return hn

        loop = asyncio.get_running_loop()
        try:
            hn = await loop.run_in_executor(None, convert)
        except hypernetwork.HypernetworkError as exc:
            raise UserError(f"`{attachment.filename}`: {exc}") from None
        name = check_name(name or hn.name or Path(attachment.filename).stem)
        if await hypernetworks.get(self.services.db, guild_id, name) is not None:
            raise UserError(f"A module named `{name}` already exists on this server. Choose another name with `name:`.")
        hn.name = name
        native = await loop.run_in_executor(None, hn.to_bytes)
        sha = hashlib.sha256(native).hexdigest()
        path = self.directory / str(guild_id) / f"{sha}.safetensors"
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(native)
        try:
            return await hypernetworks.register(self.services.db, guild_id, user_id, name, str(path), sha, self._describe(hn))
        except BaseException:
            if not existed:
                path.unlink(missing_ok=True)
            raise

    @staticmethod
    def _describe(hn: hypernetwork.Hypernetwork) -> dict[str, Any]:
        s = hn.structure
        return {
            "layers": list(s.layers),
            "activation": s.activation,
            "layer_norm": s.layer_norm,
            "widths": hn.widths,
            **{k: v for k, v in hn.meta.items() if k in ("source", "base_model", "step", "training")},
        }

    async def delete(self, guild_id: int, user_id: int, name: str) -> None:
        module = await self.find(guild_id, user_id, name, owned=True)
        await hypernetworks.delete(self.services.db, module.id)
        if not any(m.path == module.path for m in await hypernetworks.list_all(self.services.db, guild_id)):
            Path(module.path).unlink(missing_ok=True)

    async def share(self, guild_id: int, user_id: int, name: str) -> Any:
        module = await self.find(guild_id, user_id, name, owned=True)
        if not self.ready(module):
            raise UserError(f"`{name}` is still training; share it once it is done.")
        if module.shared and module.status in (ModuleStatus.PENDING, ModuleStatus.APPROVED):
            raise UserError(f"`{name}` is already {module.status}.")
        return await hypernetworks.update(self.services.db, module.id, shared=True, status=ModuleStatus.PENDING)

    # -- training ----------------------------------------------------------------------------------------
    async def training_set(self, first: discord.Attachment, more: list[discord.Attachment], captions: str | None) -> list[tuple[Image.Image, str]]:
        """The captioned images of a training request, at training size (decoded off the event loop)."""
        limits = self.services.config.limits
        caps = TrainingCaps(limits.max_train_images, limits.max_input_pixels, limits.max_train_pixels, limits.max_attachment_bytes)
        buckets = self.services.jobs.buckets
        loop = asyncio.get_running_loop()
        if first.filename.lower().endswith(".zip"):
            if more:
                raise UserError("Give either a zip or images, not both.")
            data = await self.services.download(first)
            pairs = await loop.run_in_executor(None, read_training_zip, data, caps, buckets)
        else:
            files = [(a.filename, await self.services.download(a)) for a in (first, *more)]
            pairs = [(image, None) for image in await loop.run_in_executor(None, decode_training_images, files, caps, buckets)]
        given = [c.strip() for c in (captions or "").split("|")] if captions and captions.strip() else []
        if len(given) not in (0, 1, len(pairs)):
            raise UserError(f"Give one caption for all images or one per image ({len(pairs)}), separated by `|`.")
        out = []
        for i, (image, caption) in enumerate(pairs):
            text = caption or (given[i] if len(given) == len(pairs) else given[0] if given else None)
            if not text:
                raise UserError("Every image needs a caption: use `captions:` or .txt files beside the images in the zip.")
            out.append((image, text))
        return out

    async def train_params(
        self, name: str, images: list[Image.Image], captions: list[str], steps: int | None, seed: int | None = None
    ) -> tuple[HypernetTrainParams, list[bytes]]:
        """A training job's parameters and its images as PNG files: ``train_images`` holds the keys the
        files will have in the image store, where `submit_training` puts them once the job passed every
        check.  The name is checked, not reserved, and the module's path is set by `submit_training`."""
        gen, cfg = self.services.config.generation, self.config
        steps = steps or cfg.train_steps
        width, height = nearest_bucket(*images[0].size, self.services.jobs.buckets)
        self.services.jobs.check_tokens(captions[0])
        pngs = await asyncio.get_running_loop().run_in_executor(None, lambda: [png_bytes(image) for image in images])
        params = HypernetTrainParams(
            prompt=captions[0],
            user_prompt=f"hypernetwork {name}: {captions[0]}",
            width=width,
            height=height,
            steps=min(gen.default_steps, self.services.config.limits.max_steps),
            cfg=gen.default_cfg,
            sampler=gen.default_sampler,
            seed=new_seed() if seed is None else seed,
            clip_skip=self.services.config.model.clip_skip,
            train_images=tuple(key_for(data) for data in pngs),
            captions=tuple(captions),
            train_steps=steps,
            train_area=gen.max_area,
            # forward + backward ≈ 3 UNet passes per image, a CFG sampling step 2
            work_steps=steps * cfg.batch_size * 3 // 2,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            shallow_penalty=cfg.shallow_penalty,
            module_name=name,
            module_path="",
        )
        return params, pngs

    async def submit_training(self, interaction: discord.Interaction, params: HypernetTrainParams, pngs: list[bytes]) -> list[Any]:
        """Reserve the name (the module row) and queue the job with its images (``pngs``, named by
        ``params.train_images``, stored only once the rules and credits passed); the row goes if nothing was
        queued.  A refusal stores nothing."""
        guild_id, user_id = interaction.guild_id, interaction.user.id
        name = params.module_name
        if await hypernetworks.get(self.services.db, guild_id, name) is not None:
            raise UserError(f"A module named `{name}` already exists on this server. Choose another name.")
        path = self.directory / str(guild_id) / f"trained-{uuid.uuid4().hex}.safetensors"
        params = dataclasses.replace(params, module_path=str(path))
        module = await hypernetworks.register(self.services.db, guild_id, user_id, name, str(path), "", {"source": "trained"})
        try:
            jobs = await self.services.submit_from_interaction(interaction, [params], uploads=pngs)
        except UserError:
            await hypernetworks.delete(self.services.db, module.id)
            raise
        await hypernetworks.update(self.services.db, module.id, metadata={"training_job": jobs[0].id})
        return jobs


def sample_params(p: HypernetTrainParams) -> ImagineParams:
    """An /imagine job from a training: its sample prompt with the trained module, a new seed."""
    fields = sampling_fields(p) | {"user_prompt": p.prompt, "seed": new_seed(), "count": 1}
    return ImagineParams(**fields, hypernets=(HypernetUse(name=p.module_name, path=p.module_path, strength=1.0),))

