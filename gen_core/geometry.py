"""The sizes a loaded model works at, derived from the model itself.

A Stable Diffusion checkpoint is trained at a native side (512 for SD 1.x, 768 for SD 2.x-v, 64 for
the toy-world model) and can only make sizes its VAE and UNet divide evenly.  Every size rule of
the bot follows from two numbers read off the model:

- ``native``: the UNet's sample size times the VAE's downscale factor;
- ``step``: the grid buckets are laid on: an eighth of the native side (NovelAI's 64 px at 512), but
  never finer than the VAE's factor times the UNet's total downsampling (what the UNet can divide).

For an SD 1.x checkpoint this gives exactly NovelAI's rules (512 px, 64-px steps, a 512x768 bucket
budget, 256-px outpaint borders); for a 64-px model every aspect exists at its own scale.

An SDXL model (a UNet with size conditioning, ``addition_embed_type = "text_time"``) has its own
rules: a sixteenth of the native side as the grid (64 px at 1024), a budget of the native square
(~1 MP) and SDXL's bucket list (:func:`gen_core.buckets.sdxl_buckets`) scaled to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from gen_core.buckets import Size, scale_buckets, sdxl_buckets
from gen_core.family import resolve_family


@dataclass(frozen=True)
class Geometry:
    native: int  # the side the model was trained at, in pixels
    step: int  # bucket grid and snap, in pixels
    vae_factor: int  # pixels per latent cell
    sdxl: bool = False  # SDXL's buckets and budget

    @property
    def bucket_area(self) -> int:
        """NovelAI's pixel budget (512x768 for a 512-px model), scaled to the model; SDXL: the
        native square (1024² for SDXL)."""
        if self.sdxl:
            return self.native * self.native
        return self.native * self.native * 3 // 2

    @property
    def min_side(self) -> int:
        return self.step

    @property
    def outpaint_pixels(self) -> int:
        """How far an outpaint extends by default (256 px for a 512-px model)."""
        return self.native // 2

    def buckets(self, max_area: int | None = None) -> list[Size]:
        if self.sdxl:
            return sdxl_buckets(max_area or self.bucket_area, self.step)
        return scale_buckets(max_area or self.bucket_area, self.step)

    def snap_up(self, value: float) -> int:
        """``value`` rounded up to the grid (at least one step)."""
        return max(self.step, math.ceil(value / self.step) * self.step)

    def snap_down(self, value: float) -> int:
        """``value`` rounded down to the grid (at least one step)."""
        return max(self.step, int(value // self.step) * self.step)

    def snap(self, value: float) -> int:
        """``value`` rounded to the nearest point of the grid (at least one step)."""
        return max(self.step, round(value / self.step) * self.step)

    @classmethod
    def from_configs(cls, unet: dict, vae: dict) -> Geometry:
        vae_factor = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
        down = len(unet.get("down_block_types", (0,) * 4)) - 1
        sample = unet.get("sample_size", 64)
        sample = sample[0] if isinstance(sample, list | tuple) else sample
        native = int(sample) * vae_factor
        sdxl = unet.get("addition_embed_type") == "text_time"
        grid = native // 16 if sdxl else native // 8
        return cls(native=native, step=max(vae_factor * 2**down, grid), vae_factor=vae_factor, sdxl=sdxl)

    @classmethod
    def of_pipeline(cls, pipe) -> Geometry:
        return cls.from_configs(dict(pipe.unet.config), dict(pipe.vae.config))

    @classmethod
    def of_model(cls, path: str | Path, family: str = "auto") -> Geometry:
        """Read a diffusers folder's configs without loading weights; for a single checkpoint (or a
        hub id) the standard geometry of its family (``family`` where the file cannot tell)."""
        folder = Path(path)
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text())
            vae = json.loads((folder / "vae" / "config.json").read_text())
        except (OSError, ValueError):
            return SDXL if resolve_family(path, family) == "sdxl" else SD1
        return cls.from_configs(unet, vae)


SD1 = Geometry(native=512, step=64, vae_factor=8)
SDXL = Geometry(native=1024, step=64, vae_factor=8, sdxl=True)
