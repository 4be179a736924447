"""Outpainting (grow a picture beyond its borders) and inpainting (regenerate a masked region).

Both are one operation: an image, a mask (white = regenerate) and a prompt.

* Outpaint: :func:`plan_outpaint` sizes the new canvas (original plus the added border, snapped to
  multiples of the model's grid step (64 px for SD 1.x), downscaling the original first when the canvas would exceed the area limit);
  :func:`outpaint_inputs` builds the canvas (the new area edge-extended, blurred and given noise
  matched to the image's colours, not flat grey) and the feathered mask.
* Inpaint: :func:`inpaint_mask` reads the mask (a second image, or the image's transparency),
  :func:`fill_masked` prepares the masked area (``original``, ``noise`` or ``blur``).
* :func:`inpaint_batch` runs several such requests as one batched diffusers
  inpainting pipeline call (``StableDiffusionInpaintPipeline``, or the SDXL one on SDXL with the
  pooled embeddings and size conditioning of the engine) with per-image seeds.  With the ordinary 4-channel UNet
  that pipeline blends latents at every step (the known latents re-noised to the current timestep
  are kept outside the mask); when ``EngineConfig.inpaint_path`` names a dedicated inpainting
  checkpoint its 9-channel UNet is used instead, sharing the VAE and text encoder.  The pipeline's
  mask processor would binarise the feathered mask, so it is replaced by one that keeps it soft,
  and every output is composited in pixel space with the input: pixels where the mask is 0 (the
  original outside the feather band) are exactly the input's.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from gen_core.geometry import Geometry
from gen_core.images import has_alpha, to_rgb, to_rgba
from gen_core.samplers import make_scheduler
from gen_core.types import Cancelled, GeneratedImage, GenerationRequest, is_cancelled

DIRECTIONS = ("left", "right", "up", "down")
ZOOMS = {"zoom": 2.0, "zoom1.5": 1.5, "zoom2": 2.0}
FILLS = ("original", "noise", "blur")


class MaskError(ValueError):
    """A mask was refused; the message is meant for the user."""


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class OutpaintPlan:
    """Where the (possibly downscaled) original sits on the new canvas."""

    canvas: tuple[int, int]  # width, height: multiples of the model's grid step
    box: tuple[int, int, int, int]  # left, top, width, height of the original on the canvas
    downscaled: bool  # the original was made smaller to keep the canvas within the area limit

    @property
    def original_size(self) -> tuple[int, int]:
        return self.box[2], self.box[3]


def _borders(size: tuple[int, int], direction: str, pixels: int) -> tuple[float, float, float, float]:
    w, h = size
    if direction in ZOOMS:
        z = ZOOMS[direction]
        dx, dy = w * (z - 1) / 2, h * (z - 1) / 2
        return dx, dx, dy, dy
    if direction not in DIRECTIONS:
        raise ValueError(f"Unknown direction {direction!r}; use {', '.join(DIRECTIONS + tuple(ZOOMS))}")
    if pixels < 1:
        raise ValueError(f"Pixels must be at least 1 (got {pixels})")
    return tuple(float(pixels) if d == direction else 0.0 for d in DIRECTIONS)  # type: ignore[return-value]


def plan_outpaint(
    size: tuple[int, int], direction: str, pixels: int, max_area: int, geometry: Geometry
) -> OutpaintPlan:
    """The canvas for extending an image of ``size`` by ``pixels`` towards ``direction``.

    ``direction`` is left/right/up/down or a zoom out (``zoom1.5``, ``zoom2``; ``zoom`` = ×2).
    The canvas is snapped up to the model's grid (64 px for SD 1.x): the slack goes to the extended side (split for a
    zoom and across the other axis).  If the canvas would exceed ``max_area`` the original and the
    border are scaled down together first (``downscaled``).
    """
    if max_area < geometry.step**2:
        raise ValueError(f"max_area must be at least {geometry.step**2}")
    scale = 1.0
    while True:
        w, h = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
        left, right, up, down = (b * scale for b in _borders(size, direction, pixels))
        width, height = geometry.snap_up(w + left + right), geometry.snap_up(h + up + down)
        if width * height <= max_area:
            break
        scale *= min(0.98, math.sqrt(max_area / (width * height)))
    slack_x, slack_y = width - w, height - h
    x = _share(slack_x, left, right)
    y = _share(slack_y, up, down)
    return OutpaintPlan(canvas=(width, height), box=(x, y, w, h), downscaled=scale < 1.0)


def _share(slack: int, before: float, after: float) -> int:
    """Offset of the original along one axis: the slack split in proportion to the borders asked for."""
    if before + after <= 0:
        return slack // 2
    return round(slack * before / (before + after))


# ----------------------------------------------------------------------------- masks and fills


def _dilate(hard: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)² square, separably via cumulative sums."""
    if radius <= 0:
        return hard.copy()
    out = hard.astype(np.int32)
    for axis in (0, 1):
        padded = np.pad(out, [(radius + 1, radius) if a == axis else (0, 0) for a in (0, 1)])
        sums = np.cumsum(padded, axis=axis)
        n = out.shape[axis]
        hi = np.take(sums, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
        lo = np.take(sums, np.arange(0, n), axis=axis)
        out = ((hi - lo) > 0).astype(np.int32)
    return out.astype(bool)


def feather_mask(mask: Image.Image, blur: int) -> Image.Image:
    """A hard mask (white = regenerate) feathered ``blur`` pixels outwards, into the kept area.

    The masked area stays fully white; the band of ``blur`` pixels around it ramps down; beyond
    the band the mask is exactly 0, so those pixels are kept exactly by the final composite.
    """
    hard = np.asarray(mask.convert("L")) >= 128
    if blur <= 0:
        return Image.fromarray((hard * 255).astype(np.uint8), "L")
    soft = Image.fromarray((hard * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(blur / 2.5))
    ramp = np.clip(np.asarray(soft, dtype=np.float32) * 2.0, 0, 255)
    out = np.where(hard, 255.0, np.where(_dilate(hard, blur), ramp, 0.0))
    return Image.fromarray(np.rint(out).astype(np.uint8), "L")


def _colour_noise(image: np.ndarray, keep: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with the per-channel mean and spread of the kept pixels."""
    known = image[keep] if keep.any() else image.reshape(-1, 3)
    mean, std = known.mean(axis=0), known.std(axis=0) + 1.0
    return rng.normal(mean, std, size=(*shape, 3))


def fill_masked(image: Image.Image, mask: Image.Image, fill: str, seed: int = 0) -> Image.Image:
    """The image with its masked area (mask ≥ 128) replaced: ``original`` keeps it, ``noise``
    puts colour-matched noise there, ``blur`` a heavily blurred version of the image."""
    if fill not in FILLS:
        raise ValueError(f"Unknown fill {fill!r}; use one of {', '.join(FILLS)}")
    if fill == "original":
        return image.copy()
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    hard = np.asarray(mask.convert("L")) >= 128
    if fill == "noise":
        replacement = _colour_noise(arr, ~hard, hard.shape, np.random.default_rng(seed))
    else:
        radius = max(image.size) / 8
        replacement = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    out = np.where(hard[..., None], replacement, arr)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def outpaint_inputs(
    image: Image.Image, plan: OutpaintPlan, blur: int, seed: int = 0
) -> tuple[Image.Image, Image.Image]:
    """(canvas, feathered mask) for an outpaint: the original pasted at ``plan.box``; the new area
    edge-extended from the original, blurred, with noise of the image's colours on top."""
    x, y, w, h = plan.box
    width, height = plan.canvas
    original = to_rgb(image)
    if original.size != (w, h):
        original = original.resize((w, h), Image.Resampling.LANCZOS)
    arr = np.asarray(original)
    pads = ((y, height - h - y), (x, width - w - x), (0, 0))
    extended = Image.fromarray(np.pad(arr, pads, mode="edge"), "RGB")
    smooth = np.asarray(extended.filter(ImageFilter.GaussianBlur(max(4, min(w, h) / 16))), dtype=np.float32)
    hard = np.ones((height, width), dtype=bool)
    hard[y : y + h, x : x + w] = False
    noise = _colour_noise(arr.astype(np.float32), np.ones((h, w), bool), (height, width), np.random.default_rng(seed))
    new_area = 0.75 * smooth + 0.25 * noise
    canvas = np.where(hard[..., None], new_area, np.pad(arr, pads).astype(np.float32))
    canvas_image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    mask = feather_mask(Image.fromarray((hard * 255).astype(np.uint8), "L"), blur)
    return canvas_image, mask


def inpaint_mask(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """The hard mask (L, 255 = regenerate) of an inpaint request.

    With ``mask`` (any mode): white/bright = regenerate; transparent parts count as black.  Without:
    the transparent parts (alpha < 128) of ``image`` are the mask.  Raises :class:`MaskError` for a
    size mismatch, an image without transparency and no mask, or an empty mask.
    """
    if mask is None:
        if not has_alpha(image):
            raise MaskError(
                "Give a mask image (white = repaint), or upload a PNG whose area to repaint is transparent."
            )
        hard = np.asarray(to_rgba(image))[..., 3] < 128
    else:
        if mask.size != image.size:
            raise MaskError(
                f"The mask is {mask.size[0]}×{mask.size[1]} but the image is {image.size[0]}×{image.size[1]}; "
                "they must be the same size."
            )
        rgba = np.asarray(to_rgba(mask), dtype=np.float32)
        luminance = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        hard = luminance * (rgba[..., 3] / 255.0) >= 128
    if not hard.any():
        raise MaskError("The mask is empty: paint the area to repaint white (or make it transparent in the image).")
    return Image.fromarray((hard * 255).astype(np.uint8), "L")


def work_size(size: tuple[int, int], max_area: int, geometry: Geometry) -> tuple[int, int]:
    """The generation size for an inpaint of an image of ``size``: scaled within ``max_area``, on the model's grid."""
    w, h = size
    scale = min(1.0, math.sqrt(max_area / (w * h)))
    width, height = geometry.snap(w * scale), geometry.snap(h * scale)
    while width * height > max_area:
        if width >= height:
            width -= geometry.step
        else:
            height -= geometry.step
    return width, height


# ----------------------------------------------------------------------------- generation


@dataclass
class InpaintRequest:
    """``request.init_image`` (any size) is repainted where ``mask`` (L, same size, soft) is non-zero;
    the diffusion runs at ``request.width`` × ``request.height``; outputs have the image's size."""

    request: GenerationRequest
    mask: Image.Image


class _Pipelines:
    """The inpainting pipelines of one engine, built on first use on the GPU thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pipe: Any = None


_PIPELINES: weakref.WeakKeyDictionary[Any, _Pipelines] = weakref.WeakKeyDictionary()


def _soft_mask_processor(pipe: Any) -> Any:
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(
        vae_scale_factor=pipe.vae_scale_factor, do_normalize=False, do_binarize=False, do_convert_grayscale=True
    )


def _load_inpaint_unet(path: str, dtype: torch.dtype, pipeline_cls: type) -> Any:
    from diffusers import UNet2DConditionModel

    from gen_core.engine import DTYPE_KW

    source = Path(path).expanduser()
    if source.is_file():
        return pipeline_cls.from_single_file(str(source), **{DTYPE_KW: dtype}).unet
    return UNet2DConditionModel.from_pretrained(str(source), subfolder="unet", **{DTYPE_KW: dtype})


def inpaint_pipeline(engine: Any) -> Any:
    """The engine's inpainting pipeline: its own components, or the 9-channel UNet of
    ``engine.config.inpaint_path`` with the engine's VAE, text encoders and tokenizers."""
    from gen_core.engine import Engine, derive_pipeline

    holder = _PIPELINES.setdefault(engine, _Pipelines())
    with holder.lock:
        if holder.pipe is None:
            pipeline_cls = engine.pipelines.inpaint
            pipe = derive_pipeline(pipeline_cls, engine.txt2img, engine.dtype)
            path = getattr(engine.config, "inpaint_path", "")
            if path:
                unet = _load_inpaint_unet(path, engine.dtype, pipeline_cls).to(engine.device)
                if unet.config.in_channels != 9:
                    raise ValueError(f"{path}: expected an inpainting UNet with 9 input channels")
                pipe = pipeline_cls(**{**pipe.components, "unet": unet})
                Engine.configure_modules(pipe, engine.config, engine.device)
            pipe.mask_processor = _soft_mask_processor(pipe)
            pipe.set_progress_bar_config(disable=True)
            holder.pipe = pipe
        return holder.pipe


def inpaint_batch(
    engine: Any,
    items: Sequence[InpaintRequest],
    progress: Any = None,
    cancel: Any = None,
    preview_every: int = 5,
) -> list[list[GeneratedImage]]:
    """Run inpaint requests that share size, steps, sampler, CFG and strength as one pipeline call.

    Image ``k`` of a request uses seed ``seed + k``.  Returns the images per request, each the
    size of its ``init_image``, equal to it wherever its mask is 0.
    """
    from gen_core.engine import effective_img2img_steps, pipeline_strength

    if not items:
        return []
    reqs = [engine.resolve(it.request) for it in items]
    first = reqs[0]
    for r, it in zip(reqs, items, strict=True):
        if r.init_image is None or it.mask.size != r.init_image.size:
            raise ValueError("an inpaint request needs an image and a mask of the same size")
        if engine.pipeline_key(r) != engine.pipeline_key(first):
            raise ValueError("inpaint requests in one batch must share size, steps, sampler, CFG and strength")
    pipe = inpaint_pipeline(engine)
    size = (first.width, first.height)
    with engine.lock, torch.inference_mode(), engine.loras.active(first.loras):
        if is_cancelled(cancel):
            raise Cancelled()
        embeds = engine.encode_all(reqs)
        pooled = engine.pooled_all(reqs)
        length = max(e[0].shape[1] for e in embeds)
        conds, unconds, generators, images, masks = [], [], [], [], []
        for r, it, (cond, uncond) in zip(reqs, items, embeds, strict=True):
            conds.append(engine.pad_embeddings(cond, length, r.clip_skip).expand(r.count, -1, -1))
            unconds.append(engine.pad_embeddings(uncond, length, r.clip_skip).expand(r.count, -1, -1))
            generators += [torch.Generator("cpu").manual_seed(s) for s in r.image_seeds()]
            images += [to_rgb(r.init_image).resize(size, Image.Resampling.LANCZOS)] * r.count
            masks += [it.mask.convert("L").resize(size, Image.Resampling.BILINEAR)] * r.count
        pipe.scheduler = make_scheduler(first.sampler, engine.scheduler_config)
        call: dict[str, Any] = {
            "prompt_embeds": torch.cat(conds),
            "negative_prompt_embeds": torch.cat(unconds),
            "image": images,
            "mask_image": masks,
            "height": first.height,
            "width": first.width,
            "strength": pipeline_strength(first.steps, effective_img2img_steps(first.steps, first.strength)),
            "num_inference_steps": first.steps,
            "guidance_scale": first.cfg,
            "generator": generators,
            "output_type": "pil",
        }
        call |= engine.added_call_kwargs(pooled, [r.count for r in reqs], first.width, first.height)
        if progress is not None or cancel is not None:
            call["callback_on_step_end"] = engine.step_callback(
                tuple(range(len(reqs))), [r.count for r in reqs], progress, cancel, preview_every
            )
        outputs = pipe(**call).images
    results: list[list[GeneratedImage]] = []
    pos = 0
    for r, it in zip(reqs, items, strict=True):
        original = to_rgb(r.init_image)
        out = []
        for k, seed in enumerate(r.image_seeds()):
            generated = outputs[pos + k].resize(original.size, Image.Resampling.LANCZOS)
            final = Image.composite(generated, original, it.mask.convert("L"))
            params = engine.image_parameters(dataclasses.replace(r, width=original.width, height=original.height), seed)
            out.append(GeneratedImage(image=final, seed=seed, parameters=params))
        results.append(out)
        pos += r.count
    return results
