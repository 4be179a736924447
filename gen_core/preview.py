"""Cheap progress previews: the linear latent -> RGB approximation for SD 1.x/2.x latents.

Each RGB channel of the decoded image is roughly a fixed linear mix of the 4 latent channels of the
SD VAE, so a preview costs one tiny matrix product per latent pixel and no model.  The preview has
the latent resolution (1/8 of the output size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

# Rows: latent channels 0..3; columns: R, G, B.  For (scaled) SD VAE latents as the pipeline holds
# them; the result is roughly in [-1, 1].
LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """``[B, 4, h, w]`` latents -> ``[B, h, w, 3]`` uint8 RGB on the CPU."""
    if latents.ndim != 4 or latents.shape[1] != len(LATENT_RGB_FACTORS):
        raise ValueError(f"expected [B, 4, h, w] latents, got {tuple(latents.shape)}")
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float(), factors)
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
    return rgb.cpu()


def latents_to_images(latents: torch.Tensor) -> list[Image.Image]:
    """One small RGB preview image per latent of the batch."""
    return [Image.fromarray(arr.numpy(), "RGB") for arr in latents_to_rgb(latents)]


def side_by_side(images: Sequence[Image.Image], gap: int = 0) -> Image.Image:
    """The images in one row (all previews of a batch share a size)."""
    if not images:
        raise ValueError("no images")
    if len(images) == 1:
        return images[0]
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    out = Image.new("RGB", (width, height))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out
