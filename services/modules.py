"""Module libraries — hypernetworks, LoRAs and textual-inversion embeddings — under one rule set.

Each server has its own library per kind (``storage.modules``, files under ``<data_dir>/<kind>s/<guild>/``
in a native ``.safetensors`` form written at upload, so the worker never reads a pickle).  A member's
upload is private: only they may use it.  They may share it (`Library.share`); once an admin approves
it (`/admin modules approve`, ``services.admin``) every member may.  An admin may also limit private
modules to age-restricted channels (`/admin modules private`, a guild setting).

`Library` holds what every kind does (look-ups, autocomplete, upload, delete, share, the check that a
derived job may reuse a module); `ActiveLibrary` adds a member's defaults (`/hypernet use`, `/lora use`).
`Modules.apply` attaches modules to /imagine jobs when they are submitted:

* prompt tags ``<hypernet:name:w>`` and ``<lora:name:w>`` (``<lora:name:te_w:unet_w>``, ``te=``, ``unet=``)
  are removed from the text (prompt filters and the text encoder see the text without them); the tagged
  hypernetworks replace the member's active ones, tagged LoRAs are added to the member's active ones
  (a tag sets the weight of an active one);
* an embedding is used where the prompt or negative names it (its exact name as a whole word);
* jobs derived from another (🔄, Vary, Upscale) carry its modules, and each is looked up again for the
  member who asks (`Library.reused`): what they may not use is refused, never silently dropped.

Other kinds of jobs (/mix, /outpaint, /inpaint, /edit) use no modules: a tag in their prompt is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord

from gen_core.lora import LoraError, tag_weights
from gen_core.prompts import EmbeddingSlots, ExtraNetwork, PromptError, strip_extra_networks
from services import ui
from services.jobs import UserError
from services.settings import ActiveModule, check_strength
from storage import ModuleKind, ModuleStatus, modules
from worker.jobs import EmbeddingUse, HypernetUse, ImagineParams, JobParams, LoraUse

NAME = re.compile(r"^[\w.-]{1,64}$")
MAX_CHOICES = 25  # Discord shows at most 25 autocomplete choices


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise UserError("Module names are 1-64 letters, digits, `_`, `-` or `.` (no spaces), e.g. `anime-style`.")
    return name


def matching(names: Iterable[str], current: str, limit: int = MAX_CHOICES) -> list[str]:
    """Autocomplete: the names containing what the member typed (case-insensitive), those that start with
    it first; at most ``limit`` — typing narrows a library of any size down to what fits."""
    typed = current.strip().lower()
    hits = [n for n in names if typed in n.lower()]
    hits.sort(key=lambda n: (not n.lower().startswith(typed), n.lower()))
    return hits[:limit]


@dataclass(frozen=True)
class Converted:
    """An accepted upload: the file to store, what to remember about it, and the name it suggests."""

    data: bytes
    meta: dict[str, Any]
    name: str


class Library:
    """One kind's library on every server."""

    kind: ModuleKind
    noun: str  # how members read the kind: "module", "LoRA", "embedding"

    def __init__(self, services: Any, max_file_mb: int) -> None:
        self.services = services
        self.max_file_mb = max_file_mb
        self.directory = services.config.data_dir / f"{self.kind}s"

    @property
    def db(self) -> Any:
        return self.services.db

    @property
    def engine(self) -> Any:
        """The loaded model uploads are checked against; a `UserError` where this bot runs none itself."""
        if self.services.worker is None:
            raise UserError(
                "Uploaded files are checked against the model, and this bot runs none itself (`[worker] embedded = false`)."
            )
        return self.services.worker.engine

    # -- look-ups --------------------------------------------------------------------------------------
    async def visible(self, guild_id: int, user_id: int) -> list[Any]:
        """The modules of this kind the member may use: their own, and the approved shared ones."""
        return await modules.visible(self.db, self.kind, guild_id, user_id)

    async def find(self, guild_id: int, user_id: int, name: str, *, owned: bool = False) -> Any:
        module = next((m for m in await self.visible(guild_id, user_id) if m.name == name), None)
        if module is None:
            raise UserError(f"There is no {self.noun} `{name}` you can use here. See `/{self.kind} list`.")
        if owned and module.owner_id != user_id:
            raise UserError(f"`{name}` belongs to {ui.owner_mention(module.owner_id)}; only its owner can do that.")
        return module

    async def names(self, guild_id: int, user_id: int, current: str) -> list[str]:
        return matching([m.name for m in await self.visible(guild_id, user_id)], current)

    async def reused(self, guild_id: int, user_id: int, names: Iterable[str]) -> dict[str, Any]:
        """The modules a job derived from another (🔄, Vary, Upscale) reuses, by name, looked up among those
        this member may use now; one they may not is refused (the job would not be what they asked for)."""
        visible = {m.name: m for m in await self.visible(guild_id, user_id)}
        hidden = next((name for name in names if name not in visible), None)
        if hidden is not None:
            raise UserError(
                f"That image was made with the {self.noun} `{hidden}`, which you can't use here "
                "(it is private to its owner, not approved, or gone). Nothing was charged."
            )
        return visible

    # -- files -----------------------------------------------------------------------------------------
    def convert(self, data: bytes, filename: str) -> Converted:
        """Check an uploaded file against the loaded model and return what to store (blocking: the caller
        runs it off the event loop).  A refusal is a ``ValueError`` whose message is for the member."""
        raise NotImplementedError

    async def check_new_name(self, name: str) -> None:
        """Refuse a name this kind cannot take (a `UserError`); any name that is free by default."""

    async def upload(self, guild_id: int, user_id: int, attachment: discord.Attachment, name: str | None) -> Any:
        """Check, convert and register an uploaded file, private to the member.  Its size is capped before it
        is read and it is parsed off the event loop; the file is written only once it was accepted, and
        removed again if registering it fails.  A refusal is a `UserError` and leaves nothing behind."""
        limit = self.max_file_mb * 2**20
        if attachment.size > limit:
            raise UserError(f"`{attachment.filename}` is {attachment.size / 2**20:.0f} MB; the limit is {self.max_file_mb} MB.")
        data = await attachment.read()
        if len(data) > limit:
            raise UserError(f"`{attachment.filename}` is {len(data) / 2**20:.0f} MB; the limit is {self.max_file_mb} MB.")
        loop = asyncio.get_running_loop()
        try:
            converted = await loop.run_in_executor(None, self.convert, data, attachment.filename)
        except ValueError as exc:
            raise UserError(f"`{attachment.filename}`: {exc}") from None
        name = check_name(name or converted.name or Path(attachment.filename).stem)
        await self.check_new_name(name)
        if await modules.get(self.db, self.kind, guild_id, name) is not None:
            raise UserError(f"A {self.noun} named `{name}` already exists on this server. Choose another name with `name:`.")
        sha = hashlib.sha256(converted.data).hexdigest()
        path = self.directory / str(guild_id) / f"{sha}.safetensors"
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        await loop.run_in_executor(None, path.write_bytes, converted.data)
        try:
            return await modules.register(self.db, self.kind, guild_id, user_id, name, str(path), sha, converted.meta)
        except BaseException:
            if not existed:
                path.unlink(missing_ok=True)
            raise

    async def delete(self, guild_id: int, user_id: int, name: str) -> None:
        module = await self.find(guild_id, user_id, name, owned=True)
        await modules.delete(self.db, module.id)
        if not await modules.path_in_use(self.db, module.path):  # identical uploads share one file
            Path(module.path).unlink(missing_ok=True)

    def ready(self, module: Any) -> bool:
        """Whether the module's file exists (a hypernetwork in training has none yet)."""
        return Path(module.path).is_file()

    async def share(self, guild_id: int, user_id: int, name: str) -> Any:
        module = await self.find(guild_id, user_id, name, owned=True)
        if not self.ready(module):
            raise UserError(f"`{name}` is still training; share it once it is done.")
        if module.shared and module.status in (ModuleStatus.PENDING, ModuleStatus.APPROVED):
            raise UserError(f"`{name}` is already {module.status}.")
        return await modules.update(self.db, module.id, shared=True, status=ModuleStatus.PENDING)

    async def info(self, module: Any) -> list[str]:
        """What the module is, in lines for the member (from what was recorded at upload)."""
        raise NotImplementedError


class ActiveLibrary(Library):
    """A kind a member can turn on for all their /imagine jobs, each at a strength."""

    async def active(self, guild_id: int, user_id: int) -> list[tuple[Any, float]]:
        chosen = (await self.services.settings.guild(guild_id)).active.get((self.kind, user_id), ())
        by_id = {m.id: m for m in await self.visible(guild_id, user_id)}
        return [(by_id[a.module_id], a.strength) for a in chosen if a.module_id in by_id]

    async def _set_active(self, guild_id: int, user_id: int, entries: list[tuple[Any, float]]) -> None:
        await self.services.settings.set_active(self.kind, guild_id, user_id, [ActiveModule(m.id, s) for m, s in entries])

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


def _without_tags(params: JobParams) -> tuple[JobParams, list[ExtraNetwork]]:
    try:
        prompt, tags = strip_extra_networks(params.prompt)
        user_prompt, _ = strip_extra_networks(params.user_prompt)
    except PromptError as exc:
        raise UserError(str(exc)) from None
    return dataclasses.replace(params, prompt=prompt, user_prompt=user_prompt), tags


class Modules:
    """Attaches hypernetworks, LoRAs and embeddings to jobs under the server's rules (see the module docstring)."""

    TAG_KINDS = (ModuleKind.HYPERNET, ModuleKind.LORA)

    def __init__(self, services: Any) -> None:
        self.services = services

    @property
    def hypernets(self) -> ActiveLibrary:
        return self.services.hypernets

    @property
    def loras(self) -> ActiveLibrary:
        return self.services.loras

    @property
    def embeddings(self) -> Library:
        return self.services.embeddings

    async def apply(self, guild_id: int, channel_id: int | None, user_id: int, params_list: list[JobParams]) -> list[JobParams]:
        """Each job with the modules it uses (see the module docstring); a refusal is a `UserError`."""
        out = []
        for params in params_list:
            if isinstance(params, ImagineParams):
                derived = bool(params.modules)
                params, used = await (self._reused(guild_id, user_id, params) if derived else self._chosen(guild_id, user_id, params))
                await self._check_channel(guild_id, channel_id, user_id, used)
                sizes = {e.name: e.vectors for e in params.embeddings}
                for text in (params.prompt, params.negative):
                    self.services.jobs.check_tokens(text, sizes)
            else:
                _, tags = _without_tags(params)
                if tags:
                    raise UserError(
                        f"`<{tags[0].kind}:{tags[0].name}>`: module tags work in /imagine prompts only. Remove it from this one."
                    )
            out.append(params)
        return out

    async def _chosen(self, guild_id: int, user_id: int, params: ImagineParams) -> tuple[ImagineParams, list[Any]]:
        """A new job: its tags out of the text, and the modules the tags, the member's defaults and the named
        embeddings give."""
        params, tags = _without_tags(params)
        unknown = next((t for t in tags if t.kind not in self.TAG_KINDS), None)
        if unknown is not None:
            raise UserError(f"`<{unknown.kind}:{unknown.name}>`: the tags here are `<hypernet:name:0.8>` and `<lora:name:0.8>`.")
        for tag in tags:
            if tag.kind == ModuleKind.HYPERNET and (len(tag.weights) > 1 or tag.named):
                raise UserError(f"`<hypernet:{tag.name}>` takes one strength, like `<hypernet:{tag.name}:0.8>`.")

        hypernets = [
            (await self.hypernets.find(guild_id, user_id, t.name), check_strength(t.weight)) for t in tags if t.kind == ModuleKind.HYPERNET
        ] or await self.hypernets.active(guild_id, user_id)
        for module, _ in hypernets:
            if not self.hypernets.ready(module):
                raise UserError(f"`{module.name}` is still training. Use it once its sample image is posted.")

        loras = {m.name: (m, s, s) for m, s in await self.loras.active(guild_id, user_id)}
        for tag in (t for t in tags if t.kind == ModuleKind.LORA):
            try:
                unet, te = tag_weights(tag.weights, tag.named)
            except LoraError as exc:
                raise UserError(f"`<lora:{tag.name}>`: {exc}") from None
            loras[tag.name] = (await self.loras.find(guild_id, user_id, tag.name), check_strength(unet), check_strength(te))

        named = await self._named_embeddings(guild_id, user_id, (params.prompt, params.negative))
        params = dataclasses.replace(
            params,
            hypernets=tuple(HypernetUse(name=m.name, path=m.path, strength=s) for m, s in hypernets),
            loras=tuple(LoraUse(name=m.name, path=m.path, unet_weight=u, te_weight=t) for m, u, t in loras.values()),
            embeddings=tuple(EmbeddingUse(name=m.name, path=m.path, vectors=m.meta["vectors"]) for m in named),
        )
        return params, [m for m, _ in hypernets] + [m for m, _, _ in loras.values()] + named

    async def _named_embeddings(self, guild_id: int, user_id: int, texts: Sequence[str]) -> list[Any]:
        """The embeddings this member may use that the texts name (exact name, whole word)."""
        visible = {m.name: m for m in await self.embeddings.visible(guild_id, user_id)}
        if not visible:
            return []
        slots = EmbeddingSlots({name: m.meta["vectors"] for name, m in visible.items()})
        names = {name for text in texts for name in slots.named(text)}
        return [visible[name] for name in sorted(names)]

    async def _reused(self, guild_id: int, user_id: int, params: ImagineParams) -> tuple[ImagineParams, list[Any]]:
        """A derived job: every module it carries, looked up again for this member (their current files)."""
        hn = await self.hypernets.reused(guild_id, user_id, [u.name for u in params.hypernets])
        lo = await self.loras.reused(guild_id, user_id, [u.name for u in params.loras])
        em = await self.embeddings.reused(guild_id, user_id, [u.name for u in params.embeddings])
        params = dataclasses.replace(
            params,
            hypernets=tuple(dataclasses.replace(u, path=hn[u.name].path) for u in params.hypernets),
            loras=tuple(dataclasses.replace(u, path=lo[u.name].path) for u in params.loras),
            embeddings=tuple(dataclasses.replace(u, path=em[u.name].path, vectors=em[u.name].meta["vectors"]) for u in params.embeddings),
        )
        used = [hn[u.name] for u in params.hypernets] + [lo[u.name] for u in params.loras] + [em[u.name] for u in params.embeddings]
        return params, used

    async def _check_channel(self, guild_id: int, channel_id: int | None, user_id: int, used: list[Any]) -> None:
        """The server's rule for private modules: with it on, they work only in age-restricted channels."""
        private = next((m for m in used if not m.approved), None)
        if private is None or self.services.rules.is_nsfw_channel(channel_id):
            return
        if (await self.services.settings.guild(guild_id)).private_modules_nsfw_only:
            raise UserError(
                f"On this server, private modules such as `{private.name}` work only in age-restricted channels. "
                f"Use it in one, or share it with `/{private.kind} share` (an admin approves). Nothing was charged."
            )

    async def visible_names(self, guild_id: int, user_id: int) -> set[tuple[str, str]]:
        """``(kind, name)`` of every module this member may use (what ✉️ may name)."""
        out = set()
        for library in (self.hypernets, self.loras, self.embeddings):
            out |= {(library.kind.value, m.name) for m in await library.visible(guild_id, user_id)}
        return out
