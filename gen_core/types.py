"""Typed request / result objects of the generation core.

Nothing here imports torch or diffusers, so the bot side can build and inspect requests cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


class Cancelled(Exception):
    """Raised by the engine when a run was cancelled (it stops at the next step)."""


def is_cancelled(cancel: Any) -> bool:
    """Whether a run should stop now: ``cancel`` is None, a ``threading.Event`` or a callable."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if is_set is not None else cancel())


@dataclass
class GenerationRequest:
    """One user job: ``count`` images of one prompt.

    ``seed=None`` means a random 32-bit seed; image ``i`` of the request uses ``seed + i`` (as NovelAI
    and A1111 batches do), so any single image can be reproduced alone with ``seed + i, count=1``.
    ``init_image`` switches to img2img: ``strength`` is the denoising strength (img2img runs
    ``int(steps * strength)`` steps, at least one) and ``noise`` the NovelAI-style extra noise (std
    in latent units) added to the encoded init image before img2img noising.  An init image of
    another size is stretched to ``width`` x ``height``; fit it first (``buckets.fit_to_bucket``)
    and pass its size to keep the aspect ratio.
    ``extra`` holds our own fields (job id, kind, ...) that are embedded in the PNG metadata.
    ``prompt_embeds``, when set, is a ``(cond, uncond)`` pair of tensors used instead of encoding
    ``prompt``/``negative`` (Imagic's interpolated embedding); the texts still go to the metadata.
    ``loras`` (:class:`gen_core.lora.LoraUse`, in order) are active while the request is encoded and
    denoised; requests with different sets never share a UNet batch.  ``embeddings``
    (:class:`gen_core.embeddings.EmbeddingUse`) are the textual inversions its prompt and negative may
    name (see :mod:`gen_core.prompts`).
    ``guidance_min_sigma`` (A1111's "NGMS"): classifier-free guidance stops at the first step whose
    noise level sigma is below it, and the rest runs on the prompt alone (half the UNet work); 0
    guides every step.  Late guidance no longer decides what the picture shows, but it can recolour a
    low-strength img2img.
    """

    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 28
    cfg: float = 7.0
    sampler: str = "Euler a"
    seed: int | None = None
    count: int = 1
    clip_skip: int = 2
    init_image: Image.Image | None = None
    strength: float = 0.7
    noise: float = 0.0
    guidance_min_sigma: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_embeds: Any = None
    loras: tuple[Any, ...] = ()
    embeddings: tuple[Any, ...] = ()

    def image_seeds(self) -> list[int]:
        """Seeds of the request's images (requires a resolved seed)."""
        if self.seed is None:
            raise ValueError("seed is not resolved yet")
        return [self.seed + i for i in range(self.count)]


@dataclass
class GeneratedImage:
    """One output image, its seed and its A1111-style parameters (see :mod:`gen_core.metadata`)."""

    image: Image.Image
    seed: int
    parameters: dict[str, Any]

    @property
    def parameters_text(self) -> str:
        from gen_core.metadata import format_parameters

        return format_parameters(self.parameters)

    def png_bytes(self, compress_level: int = 4) -> bytes:
        """The image as PNG bytes with the A1111 ``parameters`` text chunk."""
        from gen_core.metadata import png_with_parameters

        return png_with_parameters(self.image, self.parameters_text, compress_level=compress_level)


@dataclass
class GenerationResult:
    """The images of one request; ``request`` has its seed resolved (never ``None``)."""

    images: list[GeneratedImage]
    request: GenerationRequest

    @property
    def seeds(self) -> list[int]:
        return [g.seed for g in self.images]


@dataclass
class Progress:
    """Reported once per denoising step of one UNet batch.

    ``request_indices`` are the positions (in the list given to ``generate_batch``; ``(0,)`` for
    ``generate``) of the requests in this UNet batch.  ``step`` counts from 1 to ``total``; for
    second-order samplers (Heun) ``total`` counts model evaluations, as diffusers does.
    ``preview`` (only every ``preview_every`` steps, else ``None``) shows all images of the batch
    side by side at latent resolution (1/8 of the output size); ``previews`` has one such image per
    request of ``request_indices`` (its own images side by side), for per-user progress messages.
    ``stage`` names the phase of a multi-stage job (Imagic: embedding, fine-tune, sampling); empty
    for plain generation.
    """

    step: int
    total: int
    request_indices: tuple[int, ...]
    preview: Image.Image | None = None
    previews: tuple[Image.Image, ...] = ()
    stage: str = ""


@dataclass
class EngineConfig:
    """How to load and run the model.

    ``model_path``: a local diffusers folder, a single ``.safetensors``/``.ckpt`` checkpoint, or a
    hub id.  ``device``: ``"auto"`` picks cuda > mps > cpu.  ``dtype``: ``"auto"`` is fp16 on cuda and
    fp32 elsewhere; ``"fp16"``, ``"bf16"`` or ``"fp32"`` force one.  ``attention``: ``"sdpa"``
    (torch scaled-dot-product attention, diffusers' default), ``"eager"`` (plain attention) or
    ``"xformers"``.  ``channels_last``: ``None`` means on for cuda only.  ``compile``: torch.compile
    the UNet in place (first images are slow).  ``clip_skip``/``max_chunks`` configure the prompt
    encoder.  ``max_area`` caps width*height of requested images; ``max_pixels`` /
    ``max_input_bytes`` cap untrusted input images (see :mod:`gen_core.images`); ``max_count`` caps
    a request's image count and the images of one UNet batch.
    ``single_file_config`` is passed to ``from_single_file`` as ``config`` (a diffusers folder or hub
    id whose component configs describe the checkpoint's architecture); without it diffusers infers
    the architecture and may need the hub for the default configs.
    ``vae_slicing``: decode a batch's images one by one (bounded memory; same pixels as alone).
    ``pad_prompts_in_batch``: see :meth:`gen_core.engine.Engine.generate_batch`.
    ``family``: ``"auto"`` detects SD 1.x / 2.x / SDXL from the checkpoint (:mod:`gen_core.family`);
    ``"sd1"``, ``"sd2"`` or ``"sdxl"`` decide where detection cannot.  ``vae``: a VAE (diffusers
    folder or single file) replacing the checkpoint's, e.g. SD 1.x's "new VAE" or an fp16-safe SDXL VAE.
    """

    model_path: str
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "sdpa"
    channels_last: bool | None = None
    compile: bool = False
    clip_skip: int = 2
    max_chunks: int = 3
    max_area: int = 1024 * 1024
    max_steps: int = 150
    max_count: int = 16
    max_pixels: int = 4096 * 4096
    max_input_bytes: int = 10 * 1024 * 1024
    single_file_config: str | None = None
    vae_slicing: bool = True
    pad_prompts_in_batch: bool = False
    inpaint_path: str = ""  # a dedicated inpainting checkpoint (9-channel UNet); see gen_core.outpaint
    family: str = "auto"
    vae: str = ""
    lora_cache_mb: int = 2048  # LoRA adapters kept loaded (least recently used unloaded beyond this)
