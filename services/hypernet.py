"""Hypernetwork modules for members: a module library (``services.modules``: upload, choose, share,
delete, the rules every kind follows) plus training.

Files live under ``<data_dir>/hypernets/<guild>/`` in the native ``.safetensors`` form (an uploaded
A1111 ``.pt`` is converted once, at upload, so the worker never reads a pickle).  /imagine jobs carry
what they use as ``ImagineParams.hypernets`` (attached by `services.modules.Modules.apply`).

A training job (``JobKind.HYPERNET_TRAIN``) reserves its module name at submission: the row exists at
once, its file appears when training finishes; rows of trainings that failed or were cancelled are
dropped the next time modules are listed.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from services.jobs import UserError, new_seed
from services.modules import ActiveLibrary, Converted
from storage import ModuleKind, modules
from storage.image_store import key_for
from worker.jobs import HypernetTrainParams, HypernetUse, ImagineParams, sampling_fields

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_TRAINING_DONE = ("failed", "cancelled")


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


class Hypernets(ActiveLibrary):
    kind = ModuleKind.HYPERNET
    noun = "module"

    def __init__(self, services: Any) -> None:
        super().__init__(services, services.config.hypernet.max_file_mb)
        self.config = services.config.hypernet
        self._widths: set[int] | None = None

    @property
    def widths(self) -> set[int]:
        if self._widths is None:
            self._widths = hypernetwork.model_widths(self.engine.unet)
        return self._widths

    async def visible(self, guild_id: int, user_id: int) -> list[Any]:
        """The modules this member may see; rows of trainings that failed or were cancelled are dropped."""
        rows = []
        for module in await super().visible(guild_id, user_id):
            job_id = (module.meta or {}).get("training_job")
            if job_id and not self.ready(module):
                job = await self.services.queue.get(job_id)
                if job is None or str(job.status) in _TRAINING_DONE:
                    await modules.delete(self.db, module.id)
                    continue
            rows.append(module)
        return rows

    def convert(self, data: bytes, filename: str) -> Converted:
        hn = hypernetwork.load_bytes(data, filename)
        hn.check_fits(self.widths)
        s = hn.structure
        meta = {
            "layers": list(s.layers),
            "activation": s.activation,
            "layer_norm": s.layer_norm,
            "widths": hn.widths,
            **{k: v for k, v in hn.meta.items() if k in ("source", "base_model", "step", "training")},
        }
        return Converted(hn.to_bytes(), meta, hn.name)

    async def info(self, module: Any) -> list[str]:
        if not self.ready(module):
            return [f"`{module.name}` is still training."]
        hn = await asyncio.get_running_loop().run_in_executor(None, hypernetwork.load_file, Path(module.path))
        s = hn.structure
        return [
            f"Layers {' → '.join(f'{x:g}' for x in s.layers)} · activation {s.activation}"
            f" · layer norm {'on' if s.layer_norm else 'off'} · widths {', '.join(map(str, hn.widths))}",
            *hypernetwork.describe_origin(hn.meta),
        ]

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
        if await modules.get(self.db, self.kind, guild_id, name) is not None:
            raise UserError(f"A module named `{name}` already exists on this server. Choose another name.")
        path = self.directory / str(guild_id) / f"trained-{uuid.uuid4().hex}.safetensors"
        params = dataclasses.replace(params, module_path=str(path))
        module = await modules.register(self.db, self.kind, guild_id, user_id, name, str(path), "", {"source": "trained"})
        try:
            jobs = await self.services.submit_from_interaction(interaction, [params], uploads=pngs)
        except UserError:
            await modules.delete(self.db, module.id)
            raise
        await modules.update(self.db, module.id, metadata={"training_job": jobs[0].id})
        return jobs


def sample_params(p: HypernetTrainParams) -> ImagineParams:
    """An /imagine job from a training: its sample prompt with the trained module, a new seed."""
    fields = sampling_fields(p) | {"user_prompt": p.prompt, "seed": new_seed(), "count": 1}
    return ImagineParams(**fields, hypernets=(HypernetUse(name=p.module_name, path=p.module_path, strength=1.0),))

