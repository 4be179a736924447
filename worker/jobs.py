"""Job kinds and their typed parameters: what a queued job asks the GPU to do.

There is one frozen dataclass per :class:`JobKind`.  Services build them from a command's options,
the queue stores them as JSON (``encode``; the row's ``params_version`` is :data:`PARAMS_VERSION`),
and the worker's handlers read them back (``params_of``).  Derived jobs (reroll, variation, upscale,
η re-mix, sweep) are ``dataclasses.replace`` copies of the typed parameters of the job they come from.

Nothing here imports torch or Discord: the module is plain data shared by services and the worker.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import types
import typing
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from storage.models import JobKind
from storage.policy import denoised_steps

PARAMS_VERSION = 1  # the layout of the JSON written by `encode`; migration 0002 converts older rows


class ImagineMode(enum.StrEnum):
    TEXT = "txt2img"
    IMG2IMG = "img2img"  # img2img of an uploaded picture, fitted to a bucket
    VARIATION = "variation"  # img2img of one result image at a Vary (Subtle/Strong) or Remix strength
    UPSCALE = "upscale"  # img2img of one result image at twice its size


@dataclass(frozen=True)
class HypernetUse:
    """A hypernetwork module a job samples with, at ``strength``."""

    name: str
    path: str
    strength: float


@dataclass(frozen=True)
class LoraUse:
    """A LoRA a job samples with: its weights on the UNet and on the text encoders."""

    name: str
    path: str
    unet_weight: float
    te_weight: float


@dataclass(frozen=True)
class EmbeddingUse:
    """A textual-inversion embedding the job's prompt or negative names, and its vector count (its tokens)."""

    name: str
    path: str
    vectors: int


@dataclass(frozen=True, kw_only=True)
class JobParams:
    """What every kind samples with.  ``prompt`` is what the model sees (quality tags included);
    ``user_prompt`` is what the member typed (shown in results and /history).  ``screen``: run the
    image safety check on the results (set by the server's rules)."""

    kind: ClassVar[JobKind]

    prompt: str
    user_prompt: str
    negative: str = ""
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    seed: int
    count: int = 1
    clip_skip: int = 2
    guidance_min_sigma: float = 0.0  # guidance stops below this noise level (A1111's NGMS; 0: every step)
    screen: bool = False
    model: str = ""  # the name of the model it runs on (config's [[models]]); workers serving others never take it

    # -- pricing inputs (see services.pricing.price) ------------------------------------------------
    @property
    def optimisation_steps(self) -> int:
        """Optimisation work before sampling, in sampling-step equivalents."""
        return 0

    @property
    def unet_passes(self) -> int:
        """UNet evaluations per output image and step: 2 with CFG."""
        return 2

    @property
    def denoised_strength(self) -> float | None:
        """The img2img strength when the job starts from an image (fewer steps are denoised)."""
        return None

    @property
    def denoised_steps(self) -> int:
        """The sampling steps the job denoises (fewer than ``steps`` from an image: see ``denoised_strength``)."""
        return denoised_steps(self.steps, self.denoised_strength)

    # -- batching ---------------------------------------------------------------------------------------
    def batch_group(self) -> str:
        """Jobs with equal groups are claimed together and run in one pipeline call."""
        return f"{self.kind}:{self.sampling_key()}"

    def sampling_key(self) -> str:
        """The settings one pipeline call shares between its requests."""
        return ":".join(str(v) for v in (self.model, self.width, self.height, self.steps, self.sampler, self.cfg, self.clip_skip,
                                          self.guidance_min_sigma))


def sampling_fields(params: JobParams) -> dict[str, Any]:
    """The fields every kind shares, as keyword arguments: to build a job of another kind from this one."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(JobParams)}


def _runs_alone(params: JobParams) -> str:
    return f"{params.kind}:{uuid.uuid4().hex}"


@dataclass(frozen=True, kw_only=True)
class ImagineParams(JobParams):
    kind: ClassVar[JobKind] = JobKind.IMAGINE

    mode: ImagineMode = ImagineMode.TEXT
    init_image: str | None = None  # image-store key of the image an img2img, variation or upscale starts from
    strength: float | None = None  # img2img denoising strength (None for txt2img)
    noise: float | None = None  # NovelAI's extra noise on the encoded picture, 0-1 (None for txt2img)
    fit: str | None = None  # how an upload was fitted to its bucket: "crop" or "pad"
    source_job: int | None = None
    source_index: int | None = None
    hypernets: tuple[HypernetUse, ...] = ()
    loras: tuple[LoraUse, ...] = ()
    embeddings: tuple[EmbeddingUse, ...] = ()

    @property
    def denoised_strength(self) -> float | None:
        return None if self.mode == ImagineMode.TEXT else self.strength

    @property
    def modules(self) -> tuple[HypernetUse | LoraUse | EmbeddingUse, ...]:
        """Every module the job uses."""
        return (*self.hypernets, *self.loras, *self.embeddings)

    def batch_group(self) -> str:
        if self.init_image:
            group = f"{self.kind}:img2img:{self.sampling_key()}:{self.strength}"
        else:
            group = f"{self.kind}:txt2img:{self.sampling_key()}"
        if self.hypernets or self.loras:  # attached per batch: only jobs with the same set share it
            chain = json.dumps([[h.path, h.strength] for h in self.hypernets] + [[u.path, u.unet_weight, u.te_weight] for u in self.loras])
            group += f":hn={hashlib.sha256(chain.encode()).hexdigest()[:16]}"
        return group


@dataclass(frozen=True, kw_only=True)
class EditParams(JobParams):
    """/edit (Imagic): ``embed_steps`` + ``tune_steps`` of the ``preset`` optimise on ``init_image``."""

    kind: ClassVar[JobKind] = JobKind.EDIT

    init_image: str
    eta: float
    preset: str
    embed_steps: int
    tune_steps: int
    work_steps: int  # the preset's optimisation work in sampling-step equivalents

    @property
    def optimisation_steps(self) -> int:
        return self.work_steps

    batch_group = _runs_alone  # an optimisation is never shared


@dataclass(frozen=True, kw_only=True)
class EditRemixParams(JobParams):
    """Another η or seed sampled from the tuned state kept for edit ``source_job``; priced like a txt2img."""

    kind: ClassVar[JobKind] = JobKind.EDIT_REMIX

    source_job: int
    eta: float

    def batch_group(self) -> str:  # re-mixes of one tuned state share a sampling pass
        return f"{self.kind}:{self.source_job}:{self.sampling_key()}"


class _Repaint:
    """Outpaint and inpaint repaint part of an image at ``strength``: fewer steps are denoised, and jobs of
    one strength batch together."""

    strength: float

    @property
    def denoised_strength(self) -> float | None:
        return self.strength

    def batch_group(self) -> str:
        return f"{super().batch_group()}:{self.strength}"  # type: ignore[misc]


@dataclass(frozen=True, kw_only=True)
class OutpaintParams(_Repaint, JobParams):
    """The input placed at ``box`` on a ``width`` × ``height`` canvas; the rest is painted."""

    kind: ClassVar[JobKind] = JobKind.OUTPAINT

    init_image: str
    box: tuple[int, int, int, int]
    direction: str
    pixels: int
    strength: float
    mask_blur: int
    source_job: int | None = None  # a chained outpaint: the job and candidate it continues
    source_index: int | None = None


@dataclass(frozen=True, kw_only=True)
class InpaintParams(_Repaint, JobParams):
    """The white area of ``mask`` repainted in ``init_image`` (a variation repaints a result again)."""

    kind: ClassVar[JobKind] = JobKind.INPAINT

    init_image: str
    mask: str
    strength: float
    fill: str
    mask_blur: int
    source_job: int | None = None
    source_index: int | None = None


@dataclass(frozen=True, kw_only=True)
class MixParams(JobParams):
    """Weighted prompts ``parts`` mixed by ``mix_mode``; a ``sweep`` renders the first two at each weight.
    ``prompt`` is the recipe written out, so filters and metadata see every part."""

    kind: ClassVar[JobKind] = JobKind.MIX

    parts: tuple[tuple[str, float], ...]
    mix_mode: str
    normalize: bool = True
    sweep: tuple[float, ...] = ()
    passes: int  # UNet evaluations per step of one output image (see services.mix.unet_passes)

    @property
    def unet_passes(self) -> int:
        return self.passes


@dataclass(frozen=True, kw_only=True)
class HypernetTrainParams(JobParams):
    """Train module ``module_name`` (saved to ``module_path``) on ``train_images``, then sample
    ``prompt`` with it."""

    kind: ClassVar[JobKind] = JobKind.HYPERNET_TRAIN

    train_images: tuple[str, ...]
    captions: tuple[str, ...]
    train_steps: int
    train_area: int
    lr: float
    batch_size: int
    shallow_penalty: float
    module_name: str
    module_path: str
    work_steps: int  # the training in sampling-step equivalents

    @property
    def optimisation_steps(self) -> int:
        return self.work_steps

    batch_group = _runs_alone


PARAMS_TYPES: dict[JobKind, type[JobParams]] = {
    cls.kind: cls
    for cls in (ImagineParams, EditParams, EditRemixParams, OutpaintParams, InpaintParams, MixParams, HypernetTrainParams)
}

def encode(params: JobParams) -> dict[str, Any]:
    """The JSON form stored in the jobs table (tuples become lists, enums their values)."""
    return dataclasses.asdict(params)


def decode(kind: str, data: dict[str, Any], version: int = PARAMS_VERSION) -> JobParams:
    """Typed parameters of a stored job; ``ValueError`` for an unknown kind, version or field."""
    if version != PARAMS_VERSION:
        raise ValueError(f"job parameters of version {version}; this bot reads version {PARAMS_VERSION}")
    return _convert(PARAMS_TYPES[JobKind(kind)], data)


def params_of(job: Any) -> JobParams:
    """The typed parameters of a job row (``storage.Job``)."""
    return decode(job.kind, job.params, job.params_version)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (tp,) = (a for a in typing.get_args(tp) if a is not type(None))
        return _convert(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if dataclasses.is_dataclass(tp):
        hints = _field_types(tp)
        unknown = set(value) - hints.keys()
        if unknown:
            raise ValueError(f"{tp.__name__} has no field(s) {', '.join(sorted(unknown))}")
        return tp(**{k: _convert(hints[k], v) for k, v in value.items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    return value


@dataclass(frozen=True)
class Inputs:
    """A job's stored input images, decoded (PIL images): ``image`` (resized to the job's size
    except for outpaint and inpaint, which keep the stored pixels), the inpainting ``mask`` (mode L)
    and a training's ``train_images``."""

    image: Any = None
    mask: Any = None
    train_images: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Task:
    """One claimed job as a handler sees it."""

    job_id: int
    params: JobParams
    inputs: Inputs = Inputs()
