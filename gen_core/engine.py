"""The generation engine: one loaded Stable Diffusion model, txt2img and img2img, batched.

The engine is synchronous; the bot runs it on one dedicated thread (calls are serialised by a lock
anyway).  It drives the stock diffusers pipelines with precomputed ``prompt_embeds`` (from
:class:`gen_core.prompts.PromptEncoder`: A1111 emphasis, chunking and clip skip), per-image CPU
generators (image ``i`` of a request uses ``seed + i``) and ``callback_on_step_end`` for progress,
previews and cancellation, so the overhead over a bare diffusers call stays negligible
(see ``bench/engine_overhead.py``).

Reproducibility: noise comes from CPU generators, so the initial noise for a seed is the same on
every device; pixels are identical for the same seed, settings, device and dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from gen_core import prompts
from gen_core.embeddings import EmbeddingCache, text_widths
from gen_core.family import resolve_family
from gen_core.geometry import Geometry
from gen_core.lora import LoraAdapters
from gen_core.preview import latents_to_images, side_by_side
from gen_core.samplers import canonical_sampler, make_scheduler
from gen_core.types import (
    Cancelled,
    EngineConfig,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    Progress,
    is_cancelled,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], Any]
CancelLike = threading.Event | Callable[[], bool] | None

DEFAULT_PREVIEW_EVERY = 5
MAX_SEED = 2**63 - 1
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Preference order of the UNet weight file hashed for a diffusers folder's model hash.
_UNET_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
    "diffusion_pytorch_model.safetensors.index.json",
)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}



@dataclasses.dataclass(frozen=True)
class Pipelines:
    """The diffusers pipeline classes of a model family."""

    txt2img: type
    img2img: type
    inpaint: type


PIPELINES = {
    "sd1": Pipelines(StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline),
    "sdxl": Pipelines(StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline),
}
PIPELINES["sd2"] = PIPELINES["sd1"]
# diffusers renamed the loading keyword torch_dtype -> dtype (the old one warns); older releases
# only know torch_dtype.
DTYPE_KW = (
    "dtype"
    if hasattr(importlib.import_module("diffusers.utils.deprecation_utils"), "_resolve_dtype")
    else "torch_dtype"
)


# ----------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; anything else as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> fp16 on cuda, fp32 elsewhere; or ``"fp16"``/``"bf16"``/``"fp32"``."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}; use one of auto, {', '.join(_DTYPES)}") from None


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def short_hash(path: Path) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's sha256."""
    return file_sha256(path)[:10]


def effective_img2img_steps(steps: int, strength: float) -> int:
    """Denoising steps img2img runs: ``int(steps * strength)`` clamped to ``[1, steps]``.

    diffusers runs ``int(steps * strength)`` steps and fails on zero, so a strength below
    ``1 / steps`` is clamped to one step at the lowest noise level, which returns the init image
    almost unchanged (its VAE round trip).  A tiny epsilon absorbs float error (0.29 * 100).
    """
    return min(steps, max(1, int(steps * strength + 1e-6)))


def pipeline_strength(steps: int, denoise_steps: int) -> float:
    """The strength that makes diffusers' ``int(steps * strength)`` land exactly on ``denoise_steps``."""
    return 1.0 if denoise_steps >= steps else (denoise_steps + 0.5) / steps


def _find_unet_weights(folder: Path) -> Path | None:
    for name in _UNET_WEIGHT_FILES:
        candidate = folder / "unet" / name
        if candidate.is_file():
            return candidate
    return None


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def derive_pipeline(cls, pipe, dtype: torch.dtype):
    """``cls.from_pipe(pipe)``: a pipeline sharing every component of ``pipe`` (no second UNet).

    The dtype must be passed: from_pipe casts the (shared!) modules to it, fp32 by default.  That
    cast is a no-op here, so its "modules that should be kept in float32: []" warning is dropped.
    """
    quiet = _DropMessage("should be kept in float32")
    target = logging.getLogger("diffusers.models.modeling_utils")
    target.addFilter(quiet)
    try:
        return cls.from_pipe(pipe, **{DTYPE_KW: dtype})
    finally:
        target.removeFilter(quiet)


def family_of_pipeline(pipe) -> str:
    """``sdxl`` for a pipeline with two text encoders; ``sd2`` / ``sd1`` by the text encoder's width."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if pipe.text_encoder.config.hidden_size == 1024 else "sd1"


def _load_vae(path: str, like: AutoencoderKL, dtype: torch.dtype) -> AutoencoderKL:
    """A replacement VAE: a diffusers folder (``vae/`` inside a model folder works too) or a single
    file, read with the loaded VAE's architecture (no hub access)."""
    import tempfile

    source = Path(path).expanduser()
    if source.is_dir():
        sub = "vae" if (source / "vae" / "config.json").is_file() else None
        return AutoencoderKL.from_pretrained(str(source), subfolder=sub, **{DTYPE_KW: dtype})
    if not source.is_file():
        raise FileNotFoundError(f"[model] vae not found: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        like.save_config(tmp)
        return AutoencoderKL.from_single_file(str(source), config=tmp, **{DTYPE_KW: dtype})


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.2f}".rstrip("0").rstrip(".")


# ----------------------------------------------------------------------------- engine


class Engine:
    """A loaded model.  Create with :meth:`Engine.load`.

    Besides :meth:`generate_batch`, the pieces other gen_core modules (outpaint, mix, imagic,
    hypernetwork) build on are public: :attr:`lock` (held around any use of the shared modules),
    :meth:`resolve`, :meth:`encode_all`, :meth:`plan`, :meth:`pad_embeddings`, :meth:`step_callback`,
    :meth:`image_parameters` and :attr:`scheduler_config`.
    """

    def __init__(
        self,
        pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
        config: EngineConfig,
        *,
        model_name: str,
        hash_file: Path | None = None,
    ) -> None:
        self.config = config
        self.family = family_of_pipeline(pipe)
        self.pipelines = PIPELINES[self.family]
        self.txt2img = pipe
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype
        self.img2img = derive_pipeline(self.pipelines.img2img, pipe, self.dtype)
        for p in (self.txt2img, self.img2img):
            p.set_progress_bar_config(disable=True)
        self.encoder: prompts.PromptEncoder | prompts.SDXLPromptEncoder
        if self.is_sdxl:
            self.encoder = prompts.SDXLPromptEncoder(
                (pipe.tokenizer, pipe.tokenizer_2),
                (pipe.text_encoder, pipe.text_encoder_2),
                clip_skip=config.clip_skip,
                max_chunks=config.max_chunks,
            )
        else:
            self.encoder = prompts.PromptEncoder(
                pipe.tokenizer, pipe.text_encoder, clip_skip=config.clip_skip, max_chunks=config.max_chunks
            )
        self.model_name = model_name
        self.scheduler_config = dict(pipe.scheduler.config)
        self.geometry = Geometry.of_pipeline(pipe)
        self.lock = threading.RLock()
        self.loras = LoraAdapters(self, config.lora_cache_mb << 20)
        self.embeddings = EmbeddingCache()
        self._hash_file = hash_file
        self._model_hash: str | None = None
        self._hash_lock = threading.Lock()
        if hash_file is not None:
            # Hash in the background: a multi-GB checkpoint takes seconds; the first image waits.
            threading.Thread(target=self._hash_in_background, name="model-hash", daemon=True).start()

    def _hash_in_background(self) -> None:
        try:
            self.model_hash  # noqa: B018 - computes and caches
        except OSError:
            log.exception("hashing %s failed", self._hash_file)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        """Load the model once: a diffusers folder, a single ``.safetensors``/``.ckpt`` file or a hub id.

        The family (SD 1.x/2.x or SDXL) is detected from the checkpoint (``config.family`` decides
        where that cannot tell); ``config.vae`` replaces the checkpoint's VAE.
        """
        started = time.perf_counter()
        family = resolve_family(config.model_path, config.family)
        pipeline_cls = PIPELINES[family].txt2img
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        if dtype == torch.float16 and device.type == "cpu":
            log.warning("fp16 on the CPU is slow and partly unsupported; consider dtype='fp32'")
        kwargs: dict[str, Any] = {DTYPE_KW: dtype}
        if family != "sdxl":
            kwargs |= {"safety_checker": None, "requires_safety_checker": False}
        path = Path(config.model_path).expanduser()
        hash_file: Path | None
        if path.is_dir():
            pipe = pipeline_cls.from_pretrained(str(path), **kwargs)
            hash_file, name = _find_unet_weights(path), path.name
        elif path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ValueError(f"{path}: expected a diffusers folder or a .safetensors/.ckpt checkpoint")
            if config.single_file_config:
                kwargs["config"] = config.single_file_config
            pipe = pipeline_cls.from_single_file(str(path), **kwargs)
            hash_file, name = path, path.stem
        elif _HUB_ID.match(str(config.model_path)) and path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            pipe = pipeline_cls.from_pretrained(str(config.model_path), **kwargs)  # hub id
            hash_file, name = None, str(config.model_path).split("/")[-1]
        else:
            raise FileNotFoundError(f"Model not found: {config.model_path}")

        if config.vae:
            pipe.register_modules(vae=_load_vae(config.vae, pipe.vae, dtype))
        pipe.to(device)
        cls.configure_modules(pipe, config, device)
        engine = cls(pipe, config, model_name=name, hash_file=hash_file)
        log.info(
            "loaded %s on %s (%s) in %.1fs",
            name,
            device,
            str(dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )
        return engine

    @staticmethod
    def configure_modules(pipe: Any, config: EngineConfig, device: torch.device) -> None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        if config.attention == "sdpa":
            pipe.unet.set_attn_processor(AttnProcessor2_0())
            pipe.vae.set_attn_processor(AttnProcessor2_0())
        elif config.attention == "eager":
            pipe.unet.set_attn_processor(AttnProcessor())
            pipe.vae.set_attn_processor(AttnProcessor())
        elif config.attention == "xformers":
            pipe.enable_xformers_memory_efficient_attention()
        else:
            raise ValueError(f"Unknown attention {config.attention!r}; use sdpa, eager or xformers")
        if config.vae_slicing and hasattr(pipe.vae, "enable_slicing"):
            # Decode (and encode) a batch one image at a time: a 16-image batch would otherwise need
            # gigabytes of activations at once; it also makes decoding independent of the batch.
            pipe.vae.enable_slicing()
        channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
        if channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if config.compile:
            pipe.unet.compile()  # in place: the same module object stays shared by all pipelines

    # ------------------------------------------------------------------ properties

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def unet(self):
        return self.txt2img.unet

    @property
    def vae(self):
        return self.txt2img.vae

    @property
    def tokenizer(self):
        return self.txt2img.tokenizer

    @property
    def text_encoder(self):
        return self.txt2img.text_encoder

    @property
    def model_hash(self) -> str | None:
        """A1111-style short hash (10 hex digits of sha256) of the checkpoint / UNet weights file."""
        if self._hash_file is None:
            return None
        with self._hash_lock:
            if self._model_hash is None:
                self._model_hash = short_hash(self._hash_file)
            return self._model_hash

    @property
    def text_widths(self) -> tuple[int, ...]:
        """The token widths of the text encoders (one for SD 1.x/2.x, two for SDXL): what a textual
        inversion must match."""
        encoders = [self.txt2img.text_encoder, getattr(self.txt2img, "text_encoder_2", None)]
        return text_widths([e for e in encoders if e is not None])

    def count_tokens(self, text: str, limit: int | None = None, embeddings: Mapping[str, int] | None = None) -> int:
        """Prompt tokens of ``text``; an embedding it names (``embeddings``: name → vector count) counts its vectors."""
        return prompts.count_tokens(text, self.tokenizer, limit, embeddings)

    def vectors(self, req: GenerationRequest) -> dict[str, Any] | None:
        """The ``embeddings`` argument of the prompt encoder for ``req``'s textual inversions: name → the
        vectors of the text encoder (SD 1.x/2.x), or of each (SDXL); None without any."""
        if not req.embeddings:
            return None
        loaded = {use.name: self.embeddings.get(use.path) for use in req.embeddings}
        for ti in loaded.values():
            ti.check_fits(self.text_widths)
        return {
            name: tuple(v.to(self.device) for v in ti.vectors) if self.is_sdxl else ti.vectors[0].to(self.device)
            for name, ti in loaded.items()
        }

    # ------------------------------------------------------------------ requests

    @staticmethod
    def pipeline_key(req: GenerationRequest) -> tuple:
        """Requests with equal keys can share one UNet batch (prompts, seeds, count, init images,
        extra noise and ``extra`` may differ).  For img2img the key holds the number of denoising
        steps that the strength gives, not the strength itself."""
        if req.init_image is not None:
            mode, denoise = "img2img", effective_img2img_steps(req.steps, req.strength)
        else:
            mode, denoise = "txt2img", None
        return (
            mode,
            req.width,
            req.height,
            req.steps,
            canonical_sampler(req.sampler),
            float(req.cfg),
            req.clip_skip,
            denoise,
            float(req.guidance_min_sigma),
            tuple(req.loras),
        )

    def validate(self, req: GenerationRequest) -> None:
        """Raise ``ValueError`` with a user-facing message if the request cannot run."""
        cfg = self.config
        if not isinstance(req.prompt, str) or not isinstance(req.negative, str):
            raise ValueError("prompt and negative prompt must be text")
        g = self.geometry
        for label, value in (("Width", req.width), ("Height", req.height)):
            if not isinstance(value, int) or value < g.min_side:
                raise ValueError(f"{label} must be a whole number of at least {g.min_side} pixels (got {value!r})")
            if value % g.vae_factor:
                raise ValueError(f"{label} must be a multiple of {g.vae_factor} ({g.step} recommended); got {value}")
        if req.width * req.height > cfg.max_area:
            side = int(math.isqrt(cfg.max_area))
            raise ValueError(
                f"Size {req.width}×{req.height} ({_megapixels(req.width * req.height)} MP) is over the limit "
                f"of {_megapixels(cfg.max_area)} MP (about {side}×{side})"
            )
        if not isinstance(req.steps, int) or not 1 <= req.steps <= cfg.max_steps:
            raise ValueError(f"Steps must be between 1 and {cfg.max_steps} (got {req.steps!r})")
        if not isinstance(req.count, int) or not 1 <= req.count <= cfg.max_count:
            raise ValueError(f"Image count must be between 1 and {cfg.max_count} (got {req.count!r})")
        if not isinstance(req.cfg, int | float) or not math.isfinite(req.cfg) or not 0 <= req.cfg <= 30:
            raise ValueError(f"CFG scale must be between 0 and 30 (got {req.cfg!r})")
        canonical_sampler(req.sampler)
        layers = self.encoder.max_clip_skip
        if not isinstance(req.clip_skip, int) or not 1 <= req.clip_skip <= layers:
            raise ValueError(f"Clip skip must be between 1 and {layers} (got {req.clip_skip!r})")
        if req.seed is not None and (
            not isinstance(req.seed, int) or req.seed < 0 or req.seed + req.count - 1 > MAX_SEED
        ):
            raise ValueError(f"Seed must be a whole number from 0 to {MAX_SEED} (got {req.seed!r})")
        if req.init_image is not None:
            if not isinstance(req.init_image, Image.Image):
                raise ValueError("init_image must be a PIL image")
            if not 0.0 <= req.strength <= 1.0:
                raise ValueError(f"Strength must be between 0 and 1 (got {req.strength!r})")
            if not 0.0 <= req.noise <= 1.0:
                raise ValueError(f"Noise must be between 0 and 1 (got {req.noise!r})")
        if not isinstance(req.extra, dict):
            raise ValueError("extra must be a dict")

    def resolve(self, req: GenerationRequest) -> GenerationRequest:
        self.validate(req)
        seed = secrets.randbits(32) if req.seed is None else req.seed
        return dataclasses.replace(req, seed=seed, sampler=canonical_sampler(req.sampler))

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        req: GenerationRequest,
        progress: ProgressFn | None = None,
        cancel: CancelLike = None,
        preview_every: int = DEFAULT_PREVIEW_EVERY,
    ) -> GenerationResult:
        """Generate ``req.count`` images of one request (see :meth:`generate_batch`)."""
        return self.generate_batch([req], progress=progress, cancel=cancel, preview_every=preview_every)[0]

    def generate_batch(
        self,
        reqs: Sequence[GenerationRequest],
        progress: ProgressFn | None = None,
        cancel: CancelLike = None,
        preview_every: int = DEFAULT_PREVIEW_EVERY,
    ) -> list[GenerationResult]:
        """Generate several requests, sharing UNet batches between compatible ones.

        All requests are validated and their prompts encoded before any denoising, so a bad
        request (``ValueError``; ``prompts.PromptTooLong`` is one) fails the call early.  Requests
        with equal :meth:`pipeline_key` run as one pipeline call (at most ``config.max_count`` images,
        whole requests) with per-image generators, so every image is the one its seed gives alone.
        A request's prompt and negative are padded to a common number of 77-token chunks; by default
        requests whose padded lengths differ run as separate UNet batches, because padding with
        empty chunks changes the image slightly.  With ``config.pad_prompts_in_batch`` they share
        the batch (as A1111 does) at that cost.

        ``progress`` is called after every step of every UNet batch (exceptions propagate);
        previews are computed every ``preview_every`` steps (0 = never).  ``cancel`` (an Event or
        a callable) is checked before each batch and after each step; when set, :class:`Cancelled`
        is raised and no results are returned.  Results are in request order; each result's
        ``request`` has its seed resolved.
        """
        if not reqs:
            return []
        resolved = [self.resolve(r) for r in reqs]
        with self.lock, torch.inference_mode():
            if is_cancelled(cancel):
                raise Cancelled()
            sets = list(dict.fromkeys(tuple(r.loras) for r in resolved))
            if len(sets) > 1:  # prompts are encoded per LoRA set: refuse a bad one before any denoising
                for r in (r for r in resolved if r.prompt_embeds is None):
                    for text in (r.prompt, r.negative):
                        self.encoder.tokenize(text, self.vectors(r))
            n = len(resolved)
            embeds: list = [None] * n
            pooled: list = [None] * n if self.is_sdxl else []
            results: list[GenerationResult | None] = [None] * n
            try:
                for lora_set in sets:
                    members = [i for i in range(n) if tuple(resolved[i].loras) == lora_set]
                    with self.loras.active(lora_set):
                        part = [resolved[i] for i in members]
                        for i, e in zip(members, self.encode_all(part), strict=True):
                            embeds[i] = e
                        for i, p in zip(members, self.pooled_all(part), strict=False):
                            pooled[i] = p
                        for group in self.plan(resolved, embeds, members):
                            if is_cancelled(cancel):
                                raise Cancelled()
                            images = self._run_group(group, resolved, embeds, pooled, progress, cancel, preview_every)
                            for index in group:
                                results[index] = GenerationResult(images=images[index], request=resolved[index])
            except torch.cuda.OutOfMemoryError:
                # Give the cached blocks back so the next (smaller) job can run; the caller decides.
                torch.cuda.empty_cache()
                raise
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals

    def encode_all(self, reqs: list[GenerationRequest]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # encode_pair per request (cached per distinct prompt/negative/clip skip) gives exactly the
        # embeddings a request gets alone; padding across requests is done in _run_group.
        cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        out = []
        for r in reqs:
            if r.prompt_embeds is not None:
                out.append(tuple(e.to(self.device, self.dtype) for e in r.prompt_embeds))
                continue
            key = (r.prompt, r.negative, r.clip_skip, tuple(r.embeddings))
            if key not in cache:
                cond, uncond = self.encoder.encode_pair(r.prompt, r.negative, clip_skip=r.clip_skip, embeddings=self.vectors(r))
                cache[key] = (cond.to(self.device), uncond.to(self.device))
            out.append(cache[key])
        return out

    def pooled_all(self, reqs: list[GenerationRequest]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """SDXL: each request's ``(pooled, negative pooled)`` text embedding, ``[1, dim]`` each (from
        the texts, also for requests with ``prompt_embeds``); an empty list on other families."""
        if not self.is_sdxl:
            return []
        cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for r in reqs:
            key = (r.prompt, r.negative, tuple(r.embeddings))
            if key not in cache:
                both = self.encoder.pooled_many([r.prompt, r.negative], self.vectors(r)).to(self.device, self.dtype)
                cache[key] = (both[0:1], both[1:2])
        return [cache[(r.prompt, r.negative, tuple(r.embeddings))] for r in reqs]

    def added_call_kwargs(
        self, pooled: list[tuple[torch.Tensor, torch.Tensor]], counts: Sequence[int], width: int, height: int
    ) -> dict[str, Any]:
        """The extra arguments of an SDXL pipeline call: the pooled embeddings of a UNet batch (one
        per image) and the size conditioning of the bucket (``add_time_ids``: original and target
        size = the bucket, no crop); nothing on other families."""
        if not self.is_sdxl:
            return {}
        return {
            "pooled_prompt_embeds": torch.cat([p.expand(n, -1) for (p, _), n in zip(pooled, counts, strict=True)]),
            "negative_pooled_prompt_embeds": torch.cat(
                [q.expand(n, -1) for (_, q), n in zip(pooled, counts, strict=True)]
            ),
            "original_size": (height, width),
            "target_size": (height, width),
            "crops_coords_top_left": (0, 0),
        }

    def unet_added_kwargs(self, pooled: torch.Tensor | None, width: int, height: int) -> dict[str, Any]:
        """Keyword arguments of a direct UNet call: SDXL's ``added_cond_kwargs`` for a batch with
        ``pooled`` (``[B, dim]``) text embeddings at ``width`` x ``height``; nothing elsewhere."""
        if pooled is None:
            return {}
        ids = torch.tensor([[height, width, 0, 0, height, width]], device=pooled.device, dtype=pooled.dtype)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids.expand(pooled.shape[0], -1)}}

    def pooled(self, texts: list[str]) -> torch.Tensor | None:
        """SDXL: the pooled embeddings ``[len(texts), dim]`` of prompts; ``None`` on other families."""
        if not self.is_sdxl:
            return None
        return self.encoder.pooled_many(texts).to(self.device, self.dtype)

    @contextlib.contextmanager
    def _vae_precision(self) -> Iterator[torch.dtype]:
        """The dtype to run the VAE in: fp32 for the duration when it is an fp16 VAE flagged
        ``force_upcast`` (SDXL's overflows in fp16), as diffusers' SDXL pipelines decode; a fixed
        VAE (``[model] vae``) without the flag stays in fp16."""
        vae = self.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            vae.to(torch.float32)
            try:
                yield torch.float32
            finally:
                vae.to(torch.float16)
        else:
            yield vae.dtype

    def vae_encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in ``[-1, 1]`` to scaled latents (the distribution's mode: deterministic), in the
        engine's dtype."""
        with self._vae_precision() as dtype:
            latents = self.vae.encode(pixels.to(self.device, dtype)).latent_dist.mode()
        return (latents * self.vae.config.scaling_factor).to(self.dtype)

    def vae_decode(self, latents: torch.Tensor, generator=None) -> torch.Tensor:
        """Scaled latents to pixels in ``[-1, 1]`` (the VAE's decoder output)."""
        with self._vae_precision() as dtype:
            scaled = (latents / self.vae.config.scaling_factor).to(dtype)
            return self.vae.decode(scaled, return_dict=False, generator=generator)[0]

    def plan(self, reqs: list[GenerationRequest], embeds, indices: Sequence[int] | None = None) -> list[list[int]]:
        """Indices (of ``indices``, default all) grouped into UNet batches, in order of first appearance."""
        groups: dict[tuple, list[int]] = {}
        for i in range(len(reqs)) if indices is None else indices:
            r = reqs[i]
            key = self.pipeline_key(r)
            if not self.config.pad_prompts_in_batch:
                key += (embeds[i][0].shape[1],)
            groups.setdefault(key, []).append(i)
        batches: list[list[int]] = []
        limit = self.config.max_count
        for members in groups.values():
            current: list[int] = []
            size = 0
            for i in members:
                if current and size + reqs[i].count > limit:
                    batches.append(current)
                    current, size = [], 0
                current.append(i)
                size += reqs[i].count
            batches.append(current)
        return batches

    def pad_embeddings(self, emb: torch.Tensor, length: int, clip_skip: int) -> torch.Tensor:
        missing = (length - emb.shape[1]) // 77
        if missing <= 0:
            return emb
        # One cache of the encoded empty chunk: the encoder's (emptied by encoder.clear_cache()).
        empty = self.encoder.encode("", clip_skip=clip_skip)[:, :77].to(self.device)
        return torch.cat([emb, empty.repeat(1, missing, 1)], dim=1)

    def _init_latents(self, req: GenerationRequest) -> torch.Tensor:
        """The init image encoded to (scaled) latents with the VAE mean: deterministic."""
        image = req.init_image
        if image.mode != "RGB":
            from gen_core.images import to_rgb

            image = to_rgb(image)
        if image.size != (req.width, req.height):
            image = image.resize((req.width, req.height), Image.Resampling.LANCZOS)
        return self.vae_encode(self.img2img.image_processor.preprocess(image).to(self.device))

    def _run_group(
        self,
        group: list[int],
        reqs: list[GenerationRequest],
        embeds,
        pooled: list[tuple[torch.Tensor, torch.Tensor]],
        progress: ProgressFn | None,
        cancel: CancelLike,
        preview_every: int,
    ) -> dict[int, list[GeneratedImage]]:
        first = reqs[group[0]]
        length = max(embeds[i][0].shape[1] for i in group)
        conds, unconds, generators, counts = [], [], [], []
        for i in group:
            r = reqs[i]
            cond, uncond = (self.pad_embeddings(e, length, r.clip_skip) for e in embeds[i])
            conds.append(cond.expand(r.count, -1, -1))
            unconds.append(uncond.expand(r.count, -1, -1))
            generators += [torch.Generator("cpu").manual_seed(s) for s in r.image_seeds()]
            counts.append(r.count)
        call: dict[str, Any] = {
            "prompt_embeds": torch.cat(conds),
            "negative_prompt_embeds": torch.cat(unconds),
            "height": first.height,
            "width": first.width,
            "num_inference_steps": first.steps,
            "guidance_scale": first.cfg,
            "generator": generators,
            "output_type": "pil",
        }
        call |= self.added_call_kwargs([pooled[i] for i in group] if pooled else [], counts, first.width, first.height)
        if first.init_image is None:
            pipe = self.txt2img
        else:
            pipe = self.img2img
            latents = []
            g = 0
            for i in group:
                r = reqs[i]
                base = self._init_latents(r)
                for _ in range(r.count):
                    lat = base
                    if r.noise > 0:  # NovelAI-style extra noise on the init latents
                        extra = torch.randn(base.shape, generator=generators[g], dtype=torch.float32)
                        lat = base + r.noise * extra.to(base.device, base.dtype)
                    latents.append(lat)
                    g += 1
            call["image"] = torch.cat(latents)
            call["strength"] = pipeline_strength(
                first.steps, effective_img2img_steps(first.steps, first.strength)
            )
        pipe.scheduler = make_scheduler(first.sampler, self.scheduler_config)
        unguided_from = self.guidance_stop(pipe.scheduler, first)
        if unguided_from == 0:
            call["guidance_scale"] = 1.0  # the whole run is below the floor: the prompt alone
            unguided_from = None
        if progress is not None or cancel is not None or unguided_from is not None:
            call["callback_on_step_end"] = self.step_callback(
                tuple(group), counts, progress, cancel, preview_every, unguided_from
            )
            call["callback_on_step_end_tensor_inputs"] = ["latents", *self.guided_tensors]
        images = pipe(**call).images

        out: dict[int, list[GeneratedImage]] = {}
        pos = 0
        for i in group:
            r = reqs[i]
            out[i] = [
                GeneratedImage(image=images[pos + k], seed=seed, parameters=self.image_parameters(r, seed))
                for k, seed in enumerate(r.image_seeds())
            ]
            pos += r.count
        return out

    @property
    def guided_tensors(self) -> list[str]:
        """The pipeline's per-step tensors that hold an unconditional half while classifier-free
        guidance runs (SDXL's pooled and size embeddings too)."""
        return ["prompt_embeds"] + (["add_text_embeds", "add_time_ids"] if self.is_sdxl else [])

    @staticmethod
    def guidance_stop(scheduler, req: GenerationRequest) -> int | None:
        """The index (within the run's own steps) of the first step whose noise level is below the
        request's ``guidance_min_sigma``; ``None`` when guidance runs to the end."""
        if req.guidance_min_sigma <= 0 or req.cfg <= 1:
            return None
        scheduler.set_timesteps(req.steps)
        timesteps = scheduler.timesteps
        if req.init_image is not None:  # img2img runs the last steps of the schedule only
            timesteps = timesteps[-effective_img2img_steps(req.steps, req.strength) * scheduler.order :]
        done = scheduler.alphas_cumprod[timesteps.round().long().cpu()]
        sigmas = ((1 - done) / done).sqrt()
        below = (sigmas < req.guidance_min_sigma).nonzero()
        return int(below[0]) if len(below) else None

    def step_callback(self, indices, counts, progress, cancel, preview_every, unguided_from: int | None = None):
        """A pipeline's ``callback_on_step_end``: cancellation, progress and previews, and from step
        ``unguided_from`` on, no classifier-free guidance (the pipeline's unconditional halves
        dropped, as diffusers' documented dynamic-CFG callback does)."""
        guided = self.guided_tensors

        def on_step_end(pipe, step_index, timestep, tensors):
            if is_cancelled(cancel):
                raise Cancelled()
            out = {}
            if unguided_from is not None and step_index + 1 == unguided_from:
                pipe._guidance_scale = 1.0
                out = {name: tensors[name].chunk(2)[1] for name in guided}
            if progress is not None:
                step = step_index + 1
                preview, previews = None, ()
                if preview_every > 0 and step % preview_every == 0:
                    images = latents_to_images(self._preview_latents(pipe, tensors["latents"]))
                    preview = side_by_side(images)
                    bounds = [0]
                    for c in counts:
                        bounds.append(bounds[-1] + c)
                    previews = tuple(
                        side_by_side(images[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)
                    )
                progress(Progress(step, pipe.num_timesteps, indices, preview, previews))
            return out

        return on_step_end

    @staticmethod
    def _preview_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
        # Sigma-space (k-diffusion style) samplers hold latents of std sqrt(1 + sigma^2); bring them
        # back to unit scale so early previews are not saturated noise.
        scheduler = pipe.scheduler
        index = getattr(scheduler, "step_index", None)
        if float(scheduler.init_noise_sigma) > 1.0 and index is not None and hasattr(scheduler, "sigmas"):
            sigma = float(scheduler.sigmas[min(index, len(scheduler.sigmas) - 1)])
            latents = latents / math.sqrt(sigma * sigma + 1.0)
        return latents

    def image_parameters(self, r: GenerationRequest, seed: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "prompt": r.prompt,
            "negative_prompt": r.negative,
            "steps": r.steps,
            "sampler": r.sampler,
            "cfg_scale": r.cfg,
            "seed": seed,
            "width": r.width,
            "height": r.height,
        }
        if self.model_hash:
            params["model_hash"] = self.model_hash
        params["model"] = self.model_name
        params["clip_skip"] = r.clip_skip
        if r.init_image is not None:
            params["denoising_strength"] = r.strength
            if r.noise:
                params["extra_noise"] = r.noise
        if r.guidance_min_sigma > 0:
            params["guidance_min_sigma"] = r.guidance_min_sigma
        for key, value in r.extra.items():
            params.setdefault(key, value)
        return params
