"""What every optimisation on the shared engine builds on (Imagic's stages, hypernetwork training):
the training session that leaves the UNet as found, autocast, image → latents, the training noise
schedule and the denoising loss.  Cancellation between steps is :func:`gen_core.types.is_cancelled`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image


@contextlib.contextmanager
def training_session(engine: Any) -> Iterator[Any]:
    """Hold the engine, freeze the UNet, and leave it exactly as found whatever happens."""
    unet = engine.unet
    with engine.lock:
        engine.loras.unload_all()  # the warm LoRA adapters go; they load again when next used
        if getattr(unet, "_hf_peft_config_loaded", False):  # never unload adapters someone else attached
            raise RuntimeError("the UNet already carries peft adapters; training needs it bare")
        flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        was_training = unet.training
        was_checkpointing = bool(getattr(unet, "is_gradient_checkpointing", False))
        unet.requires_grad_(False)
        try:
            yield unet
        finally:
            if getattr(unet, "_hf_peft_config_loaded", False):
                unet.unload_lora()  # puts the original Linear modules back
            if not was_checkpointing and getattr(unet, "is_gradient_checkpointing", False):
                unet.disable_gradient_checkpointing()
            for name, p in unet.named_parameters():
                p.requires_grad_(flags.get(name, False))
                p.grad = None
            unet.train(was_training)


def autocast(engine: Any) -> contextlib.AbstractContextManager:
    """Mixed precision for the UNet call of a training step (CUDA with fp16/bf16 weights only)."""
    if engine.device.type == "cuda" and engine.dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=engine.dtype)
    return contextlib.nullcontext()


def image_latents(engine: Any, image: Image.Image) -> torch.Tensor:
    """An RGB image's scaled VAE latents (distribution mode: deterministic), fp32."""
    with torch.inference_mode():
        latents = engine.vae_encode(engine.img2img.image_processor.preprocess(image))
    return latents.float().clone()


def noise_schedule(engine: Any) -> Any:
    """The DDPM schedule the model was trained with: noises latents to a timestep for the loss."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(engine.txt2img.scheduler.config)


def denoising_loss(
    engine: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """The UNet's noise (or v, as the scheduler predicts) error on ``latents`` noised to ``t``,
    conditioned on ``cond`` (and on SDXL the pooled embedding ``[1, dim]`` with the latents' size)."""
    device = engine.device
    latents, noise, t = latents.to(device), noise.to(device), t.to(device)
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    with autocast(engine):
        height, width = (side * engine.geometry.vae_factor for side in latents.shape[-2:])
        added = engine.unet_added_kwargs(
            None if pooled is None else pooled.to(device, engine.dtype).expand(len(t), -1), width, height
        )
        pred = engine.unet(
            noisy.to(engine.dtype), t, encoder_hidden_states=cond.to(device, engine.dtype), **added
        ).sample
    return torch.nn.functional.mse_loss(pred.float(), target.float())
