"""/outpaint and /inpaint between the cog and the queue: options → job parameters, the stored
input images, picking a candidate and continuing in a direction (chaining).

Input images are stored in the image store and referenced by key in the job parameters, so a
restart, a reroll or a chained outpaint finds them again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

from gen_core.images import load_image, png_bytes, to_rgb
from gen_core.outpaint import FILLS, MaskError, OutpaintPlan, inpaint_mask, plan_outpaint, work_size
from services.jobs import ImagineOptions, UserError, new_seed
from storage.image_store import key_for
from worker.jobs import InpaintParams, OutpaintParams, params_of, sampling_fields

T = TypeVar("T")

CANDIDATES = 4
# Button action → outpaint direction (the picked image's directional buttons).
DIRECTION_ACTIONS = {"left": "left", "right": "right", "up": "up", "down": "down", "zoom": "zoom1.5"}


class OutpaintService:
    def __init__(self, services: Any) -> None:
        self.services = services

    @property
    def gen(self) -> Any:
        return self.services.config.generation

    def _base_params(self, prompt: str, negative: str | None, seed: int | None, count: int) -> list[dict[str, Any]]:
        """The sampling fields of one job per expanded prompt, validated as for /imagine."""
        options = ImagineOptions(prompt=prompt, negative=negative, seed=seed, count=count)
        return [sampling_fields(p) for p in self.services.jobs.imagine_params(options)]

    def _plan(self, size: tuple[int, int], direction: str, pixels: int) -> OutpaintPlan:
        plan = plan_outpaint(size, direction, pixels, self.gen.max_area, self.services.geometry)
        if min(plan.original_size) < 16:
            raise UserError("That image is too thin to extend further on this server; try another direction.")
        return plan

    def _geometry(self, plan: OutpaintPlan, direction: str, pixels: int, key: str) -> dict[str, Any]:
        width, height = plan.canvas
        return {
            "width": width,
            "height": height,
            "box": tuple(plan.box),
            "init_image": key,
            "direction": direction,
            "pixels": pixels,
            "strength": self.gen.outpaint_strength,
            "mask_blur": self.gen.mask_blur,
        }

    async def outpaint_params(
        self, image: Image.Image, direction: str, pixels: int | None, prompt: str, negative: str | None, seed: int | None
    ) -> tuple[list[OutpaintParams], OutpaintPlan, list[bytes]]:
        """Parameters of the /outpaint jobs (four candidates each), the canvas plan and the input to store
        once the request is accepted (see `JobService.submit`)."""
        pixels = pixels or self.gen.outpaint_pixels
        count = min(CANDIDATES, self.services.config.limits.max_count)
        base = self._base_params(prompt, negative, seed, count)
        plan = self._plan(image.size, direction, pixels)
        data = await off_loop(_input_png, image, plan.original_size)
        geometry = self._geometry(plan, direction, pixels, key_for(data))
        return [OutpaintParams(**{**p, **geometry}) for p in base], plan, [data]

    async def continue_params(self, job: Any, index: int, action: str) -> tuple[OutpaintParams, OutpaintPlan, list[bytes]]:
        """A chained outpaint: candidate ``index`` of outpaint ``job`` extended towards the button's direction
        (with the input to store once it is accepted)."""
        params = params_of(job)
        images = (job.result or {}).get("images", [])
        if not 0 <= index < len(images):
            raise UserError("That image no longer exists.")
        direction = DIRECTION_ACTIONS[action]
        stored = await self.services.stored_image(images[index]["key"])
        picked = await off_loop(load_image, stored, max_pixels=self.services.config.limits.max_input_pixels)
        plan = self._plan(picked.size, direction, params.pixels)
        data = await off_loop(_input_png, picked, plan.original_size)
        geometry = self._geometry(plan, direction, params.pixels, key_for(data))
        return dataclasses.replace(params, seed=new_seed(), source_job=job.id, source_index=index, **geometry), plan, [data]

    async def inpaint_params(
        self,
        image: Image.Image,
        mask: Image.Image | None,
        prompt: str,
        negative: str | None,
        strength: float | None,
        fill: str | None,
        seed: int | None,
        count: int | None,
        mask_blur: int | None = None,
    ) -> tuple[list[InpaintParams], tuple[int, int] | None, list[bytes]]:
        """Parameters of the /inpaint jobs, the size the image was scaled down to (None if not), and the
        picture and mask to store once the request is accepted (see `JobService.submit`)."""
        fill = fill or "original"
        if fill not in FILLS:
            raise UserError(f"fill must be one of {', '.join(FILLS)}.")
        strength = self.gen.inpaint_strength if strength is None else strength
        if not 0.0 < strength <= 1.0:
            raise UserError(f"strength must be above 0 and at most 1 (you asked for {strength}).")
        if mask_blur is not None and not 0 <= mask_blur <= 64:
            raise UserError(f"mask_blur must be between 0 and 64 pixels (you asked for {mask_blur}).")
        base = self._base_params(prompt, negative, seed, count or 1)
        # The output has the input's size: cap it at the largest size the bot generates (upscales).
        rgb, hard = await off_loop(_inpaint_inputs, image, mask, self.gen.max_area * 4)
        downscaled = rgb.size != image.size
        width, height = work_size(rgb.size, self.gen.max_area, self.services.geometry)
        uploads = await off_loop(lambda: [png_bytes(rgb), png_bytes(hard)])
        geometry = {
            "width": width,
            "height": height,
            "init_image": key_for(uploads[0]),
            "mask": key_for(uploads[1]),
            "strength": strength,
            "fill": fill,
            "mask_blur": self.gen.mask_blur if mask_blur is None else mask_blur,
        }
        return [InpaintParams(**{**p, **geometry}) for p in base], rgb.size if downscaled else None, uploads


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a thread: decoding, resampling and encoding pictures never run on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


def _input_png(image: Image.Image, size: tuple[int, int]) -> bytes:
    """An outpaint's input: ``image`` in RGB at ``size`` (its plan's original size), as PNG."""
    original = to_rgb(image)
    if original.size != size:
        original = original.resize(size, Image.Resampling.LANCZOS)
    return png_bytes(original)


def _inpaint_inputs(image: Image.Image, mask: Image.Image | None, limit: int) -> tuple[Image.Image, Image.Image]:
    """An inpaint's picture (RGB) and hard mask, scaled down together to at most ``limit`` pixels."""
    try:
        hard = inpaint_mask(image, mask)
    except MaskError as exc:
        raise UserError(str(exc)) from None
    rgb = to_rgb(image)
    if rgb.width * rgb.height > limit:
        scale = math.sqrt(limit / (rgb.width * rgb.height))
        size = (max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        hard = hard.resize(size, Image.Resampling.NEAREST)
        if not hard.getbbox():
            raise UserError("The mask is too small to survive scaling the image down; paint a larger area.")
    return rgb, hard
