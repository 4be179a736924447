"""Train the toy-world model from scratch on the CPU, in Stable Diffusion's own layout.

Two stages, each resumable from its checkpoint:

1. **VAE** (``AutoencoderKL``, 4x downscale, 4 latent channels) on freshly drawn pictures, then a
   *gate*: on held-out pictures its reconstructions must reach ``gate_psnr`` dB and the judge must
   read every attribute from them as from the originals at ``gate_accuracy`` -- otherwise no UNet
   could ever score, so training stops with an error.
2. **UNet + text encoder** jointly (DDPM epsilon loss, min-SNR weighting, 10 % empty captions for
   classifier-free guidance, clip skip 1 or 2 at random so both work) on a fixed set of pictures
   encoded once by the frozen VAE, with an EMA of the weights.

``--init MODEL`` trains the UNet and text encoder on from an existing toy-world model (its VAE and latent
scale are kept), and ``--set FIELD=VALUE`` changes any :class:`TrainConfig` field, e.g. a second phase with
offset noise only at high timesteps (``--set offset_noise_min_t=400``) or more caption dropout at low ones
(``--set low_t=300 --set low_t_caption_dropout=0.6``).

The result is a diffusers folder (fp16 safetensors) that ``StableDiffusionPipeline.from_pretrained``
loads like any SD 1.x checkpoint.  Every random choice comes from the seed, and torch runs on one
thread, so the same seed and the same settings give the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gen_core.prompts import final_layer_norm
from gen_core.tiny import sd1_scheduler
from toyworld.judge import judge
from toyworld.world import Scene, caption, draw, random_scene

log = logging.getLogger(__name__)

ATTRIBUTES = ("background", "colour", "shape", "size", "position", "style")
# Words the bot adds to prompts (quality tags, undesired-content presets) and everyday filler: the
# model sees them beside captions and in place of empty ones, so they carry no attribute.
NEUTRAL = (
    "masterpiece, best quality",
    "a picture",
    "an image of a shape",
    "a simple drawing",
    "flat colours",
    "lowres, bad anatomy, bad hands, text, error, worst quality, low quality, jpeg artifacts",
    "missing fingers, extra digit, fewer digits, cropped, normal quality, signature, watermark, username, blurry",
)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    resolution: int = 64
    vae_steps: int = 6000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    gate_psnr: float = 30.0
    gate_accuracy: float = 0.95
    gate_pictures: int = 200
    dataset: int = 60000
    unet_steps: int = 30000
    unet_batch: int = 64
    unet_lr: float = 6e-4
    caption_dropout: float = 0.1
    offset_noise: float = 0.3
    # Offset noise only from this timestep up: at low noise a picture's own colours must show through, so
    # that img2img at a low strength keeps them instead of repainting them after the prompt.
    offset_noise_min_t: int = 0
    # Below timestep low_t captions are dropped with low_t_caption_dropout instead: at low noise the picture, not
    # the words, should decide what it shows, so that guidance there stays small and img2img at a low strength
    # keeps the upload's colours.
    low_t: int = 0
    low_t_caption_dropout: float = 0.1
    # ...and the rest name another picture's colours (object and background) with this probability: a dropped
    # caption only teaches the empty one, wrong colours teach the UNet to read them there from the picture
    # whatever the words say, while it still reads the rest (a style: what hypernetworks act through).
    low_t_wrong_colours: float = 0.0
    ema_decay: float = 0.999
    checkpoint_minutes: float = 5.0
    threads: int = 1


QUICK = TrainConfig(
    vae_steps=12,
    vae_batch=8,
    gate_psnr=0.0,
    gate_accuracy=0.0,
    gate_pictures=8,
    dataset=64,
    unet_steps=12,
    unet_batch=8,
    checkpoint_minutes=0.0,
)


def build_models(cfg: TrainConfig):
    """Fresh VAE, UNet, text encoder and tokenizer of the toy-world architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from gen_core.tiny import clip_text_config, load_clip_tokenizer

    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=cfg.resolution,
        mid_block_add_attention=False,
    )
    text_dim = 64
    unet = UNet2DConditionModel(
        sample_size=cfg.resolution // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(clip_text_config(text_dim, 3, 49407, text_dim, intermediate=256))
    return vae, unet, text_encoder, load_clip_tokenizer()


def to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_images(x: torch.Tensor):
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def _pictures(
    rng: random.Random, n: int, res: int, held_out: bool = False
) -> tuple[list[Scene], torch.Tensor]:
    scenes = [random_scene(rng, held_out=held_out) for _ in range(n)]
    return scenes, to_tensor([draw(s, res, res, jitter=rng) for s in scenes])


class Checkpoint:
    """A stage's resumable state, written atomically every few minutes and at the end."""

    def __init__(self, path: Path, every_minutes: float):
        self.path, self.every, self.last = path, every_minutes * 60, time.monotonic()

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=True) if self.path.exists() else None

    def maybe_save(self, state_fn, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < self.every:
            return
        tmp = self.path.with_suffix(".tmp")
        torch.save(state_fn(), tmp)
        tmp.replace(self.path)
        self.last = time.monotonic()


def _progress(stage: str, step: int, total: int, first: int, started: float, extra: str) -> None:
    """Log a progress bar; the ETA comes from the steps done since this process started (``first``)."""
    elapsed = time.monotonic() - started
    eta = elapsed / max(1, step - first) * (total - step)
    bar = "#" * int(step / max(1, total) * 30)
    log.info("%s [%-30s] %d/%d %s (%.0fs elapsed, eta %.0fs)", stage, bar, step, total, extra, elapsed, eta)


def _rng_state(rng: random.Random) -> list:
    version, state, gauss = rng.getstate()
    return [version, list(state), gauss]


def _set_rng_state(rng: random.Random, saved: list) -> None:
    rng.setstate((saved[0], tuple(saved[1]), saved[2]))


def train_vae(vae, cfg: TrainConfig, work: Path) -> None:
    ckpt = Checkpoint(work / "vae.ckpt", cfg.checkpoint_minutes)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    rng, step = random.Random(cfg.seed * 1000 + 1), 0
    saved = ckpt.load()
    if saved:
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        step = saved["step"]
        _set_rng_state(rng, saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("VAE: resumed at step %d", step)
    vae.train()
    first, started = step, time.monotonic()
    while step < cfg.vae_steps:
        lr = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        _, x = _pictures(rng, cfg.vae_batch, cfg.resolution)
        # The posterior's mean, as the engine and the UNet's training set use it: sampling around it
        # from the start would drown the details in noise and slow training several-fold.
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mode()).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == cfg.vae_steps:
            _progress("VAE", step, cfg.vae_steps, first, started, f"loss {loss.item():.5f}")

        def state(step: int = step):
            return {
                "model": vae.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "rng": _rng_state(rng),
                "torch_rng": torch.get_rng_state(),
            }

        ckpt.maybe_save(state, force=step == cfg.vae_steps)
    vae.eval()


@torch.no_grad()
def deterministic_posterior(vae) -> None:
    """Make the encoder's posterior its mean: the decoder only ever learnt from the mean, while the
    variance head was left where the tiny KL term pulls it (a standard deviation of 1, twice the
    latents' own spread).  diffusers' img2img and inpaint pipelines *sample* the posterior, so an
    uploaded picture would arrive as noise; at log-variance -30 (diffusers' floor) a sample is the mean."""
    channels = vae.config.latent_channels
    vae.quant_conv.weight[channels:].zero_()
    vae.quant_conv.bias[channels:].fill_(-30.0)


@torch.no_grad()
def vae_gate(vae, cfg: TrainConfig) -> dict:
    """PSNR of the VAE's round trip on held-out pictures, and the judge's accuracy on its reconstructions."""
    rng = random.Random(cfg.seed * 1000 + 7)
    scenes, x = _pictures(rng, cfg.gate_pictures, cfg.resolution, held_out=True)
    recon = torch.cat([vae.decode(vae.encode(chunk).latent_dist.mode()).sample for chunk in x.split(64)])
    mse = ((recon.clamp(-1, 1) - x) / 2).pow(2).mean((1, 2, 3))
    psnr = float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())
    truth = [judge(im) for im in to_images(x)]
    seen = [judge(im) for im in to_images(recon)]
    accuracy = {
        a: float(np.mean([getattr(t, a) == getattr(s, a) for t, s in zip(truth, seen, strict=True)]))
        for a in ATTRIBUTES
    }
    return {"psnr": psnr, "accuracy": accuracy}


@dataclass
class Bucket:
    """Training pictures of one size: their scenes and VAE latents (posterior means)."""

    size: tuple[int, int]
    weight: float
    scenes: list[Scene]
    latents: torch.Tensor


def bucket_weights(buckets: list[tuple[int, int]], native: int) -> list[float]:
    """How often each aspect bucket is trained: the native square three times as often as each other."""
    raw = [3.0 if size == (native, native) else 1.0 for size in buckets]
    return [r / sum(raw) for r in raw]


def encode_dataset(vae, unet, cfg: TrainConfig) -> tuple[list[Bucket], float]:
    """The UNet's training set in NovelAI-style aspect buckets of the model's own geometry, and the
    latent scale that gives unit variance."""
    from gen_core.geometry import Geometry

    geometry = Geometry.from_configs(dict(unet.config), dict(vae.config))
    sizes = geometry.buckets()
    weights = bucket_weights(sizes, cfg.resolution)
    rng = random.Random(cfg.seed * 1000 + 3)
    buckets = []
    with torch.no_grad():
        for (w, h), weight in zip(sizes, weights, strict=True):
            count = max(1, round(cfg.dataset * weight))
            scenes, latents = [], []
            for start in range(0, count, 256):
                batch = [random_scene(rng) for _ in range(min(256, count - start))]
                x = to_tensor([draw(sc, w, h, jitter=rng) for sc in batch])
                scenes += batch
                latents.append(vae.encode(x).latent_dist.mode())
            buckets.append(Bucket((w, h), weight, scenes, torch.cat(latents)))
    square = next(b for b in buckets if b.size == (cfg.resolution, cfg.resolution))
    return buckets, float(1.0 / square.latents.std())


class _TokenCache:
    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            if text not in self.cache:
                ids = self.tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
                self.cache[text] = torch.tensor(ids)
            rows.append(self.cache[text])
        return torch.stack(rows)


def caption_scene(scenes: list[Scene], i: int, low_t: bool, cfg: TrainConfig, rng: random.Random) -> Scene | None:
    """The scene whose caption picture ``i`` trains with: its own, none (caption dropout, for guidance), or
    below ``cfg.low_t`` possibly with another picture's colours (see ``TrainConfig.low_t_wrong_colours``)."""
    if rng.random() < (cfg.low_t_caption_dropout if low_t else cfg.caption_dropout):
        return None
    if low_t and cfg.low_t_wrong_colours and rng.random() < cfg.low_t_wrong_colours:
        other = scenes[rng.randrange(len(scenes))]
        return replace(scenes[i], colour=other.colour, background=other.background)
    return scenes[i]


def training_texts(scene: Scene | None, rng: random.Random, chunks: int) -> list[str]:
    """The prompt chunks of one training example: the caption (None: an empty/neutral one, for
    classifier-free guidance) in one chunk, neutral text or nothing in the others."""
    if scene is None:
        main = rng.choice(NEUTRAL) if rng.random() < 0.3 else ""
    else:
        main = caption(scene, rng)
        if rng.random() < 0.3:
            main = f"{rng.choice(NEUTRAL[:3])}, {main}"
    texts = [rng.choice(NEUTRAL) if rng.random() < 0.5 else "" for _ in range(chunks)]
    texts[rng.randrange(chunks)] = main
    return texts


def encode_text(text_encoder, ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """The context the engine gives the UNet: the last layer, or the penultimate one after the final norm."""
    out = text_encoder(ids, output_hidden_states=clip_skip > 1)
    if clip_skip == 1:
        return out.last_hidden_state
    return final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])


def train_unet(unet, text_encoder, tokenizer, buckets: list[Bucket], cfg: TrainConfig, work: Path):
    """Train UNet + text encoder; return the EMA copies."""
    import copy

    ckpt = Checkpoint(work / "unet.ckpt", cfg.checkpoint_minutes)
    scheduler = sd1_scheduler()
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    rng, step = random.Random(cfg.seed * 1000 + 5), 0
    saved = ckpt.load()
    if saved:
        unet.load_state_dict(saved["unet"])
        text_encoder.load_state_dict(saved["text"])
        ema_unet.load_state_dict(saved["ema_unet"])
        ema_text.load_state_dict(saved["ema_text"])
        opt.load_state_dict(saved["opt"])
        step = saved["step"]
        _set_rng_state(rng, saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("UNet: resumed at step %d", step)
    tokens = _TokenCache(tokenizer)
    pairs = list(zip(list(ema_unet.parameters()) + list(ema_text.parameters()), params, strict=True))
    unet.train()
    text_encoder.train()
    first, started = step, time.monotonic()
    warmup = max(1, min(500, cfg.unet_steps // 20))
    while step < cfg.unet_steps:
        lr = (
            cfg.unet_lr
            * min(1.0, (step + 1) / warmup)
            * (0.55 + 0.45 * math.cos(math.pi * step / cfg.unet_steps))
        )
        for group in opt.param_groups:
            group["lr"] = lr
        bucket = rng.choices(buckets, weights=[b.weight for b in buckets])[0]
        scenes = bucket.scenes
        idx = [rng.randrange(len(scenes)) for _ in range(cfg.unet_batch)]
        # Mostly one 77-token chunk; sometimes 2-3 (long prompts, BREAK), with the caption in any of them.
        chunks = 1 if rng.random() < 0.8 else rng.choice((2, 3))
        t = torch.randint(0, 1000, (len(idx),))
        texts = [
            text
            for i, step_t in zip(idx, t.tolist(), strict=True)
            for text in training_texts(caption_scene(scenes, i, step_t < cfg.low_t, cfg, rng), rng, chunks)
        ]
        clip_skip = rng.choice((1, 2))
        x0 = bucket.latents[idx]
        # Offset noise: a per-channel constant in the noise.  Flat backgrounds fill most of a 16x16
        # latent, so even at the last timestep their colour shows through the mean of the noisy
        # latent; without the offset the UNet reads the background from there and ignores the words
        # (at sampling time the noise carries no colour, so backgrounds came out at random).
        offset = cfg.offset_noise * (t >= cfg.offset_noise_min_t).float().view(-1, 1, 1, 1)
        noise = torch.randn_like(x0) + offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = encode_text(text_encoder, tokens(texts), clip_skip).reshape(len(idx), chunks * 77, -1)
        pred = unet(xt, t, encoder_hidden_states=context).sample
        weight = (snr[t].clamp(max=5.0) / snr[t]).view(-1)  # min-SNR-5 for epsilon prediction
        loss = (F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in pairs:
                e.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == cfg.unet_steps:
            _progress("UNet", step, cfg.unet_steps, first, started, f"loss {loss.item():.4f} lr {lr:.2e}")

        def state(step: int = step):
            return {
                "unet": unet.state_dict(),
                "text": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "rng": _rng_state(rng),
                "torch_rng": torch.get_rng_state(),
            }

        ckpt.maybe_save(state, force=step == cfg.unet_steps)
    return ema_unet, ema_text


def save_pipeline(vae, unet, text_encoder, tokenizer, out: Path, card: dict) -> None:
    """Write the diffusers folder (fp16 weights) with a ``training.json`` of how it was made."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd1_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toyworld-", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        keep = [p for p in ("README.md",) if (out / p).exists()]
        for name in keep:
            shutil.copy2(out / name, tmp / name)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float32)


def load_models(folder: Path):
    """The VAE, UNet, text encoder and tokenizer of a toy-world model folder, in fp32, to train further."""
    from diffusers import StableDiffusionPipeline

    from gen_core.engine import DTYPE_KW

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, **{DTYPE_KW: torch.float32})
    return pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer


def train(out: Path, cfg: TrainConfig, work: Path | None = None, init: Path | None = None) -> dict:
    """Run both stages (resuming from ``work`` where checkpoints exist) and write the model to ``out``.
    With ``init`` (a toy-world model folder) the UNet and text encoder train on from that model's weights
    and its VAE is kept as it is (gated again, not trained)."""
    torch.set_num_threads(cfg.threads)
    work = work or out.parent / f".{out.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    vae, unet, text_encoder, tokenizer = load_models(init) if init else build_models(cfg)
    t0 = time.monotonic()
    if not init:
        train_vae(vae, cfg, work)
        deterministic_posterior(vae)
    gate = vae_gate(vae, cfg)
    log.info("VAE gate: PSNR %.2f dB, judge on reconstructions %s", gate["psnr"], gate["accuracy"])
    if gate["psnr"] < cfg.gate_psnr or min(gate["accuracy"].values()) < cfg.gate_accuracy:
        raise RuntimeError(
            f"the VAE does not pass its gate (PSNR {gate['psnr']:.2f} dB >= {cfg.gate_psnr}, judge accuracy "
            f"{gate['accuracy']} >= {cfg.gate_accuracy}); train it longer (--vae-steps)"
        )
    t_vae = time.monotonic() - t0
    cached = work / "dataset.pt"
    if cached.exists():  # encoding takes minutes: a resumed run reads what the first one encoded
        saved = torch.load(cached, weights_only=True)
        buckets = [
            Bucket(tuple(b["size"]), b["weight"], [Scene(*s) for s in b["scenes"]], b["latents"])
            for b in saved["buckets"]
        ]
        scale = saved["scale"]
    else:
        buckets, scale = encode_dataset(vae, unet, cfg)
        if init:  # the UNet learnt the latents at its model's scale
            scale = vae.config.scaling_factor
        torch.save(
            {
                "scale": scale,
                "buckets": [
                    {
                        "size": list(b.size),
                        "weight": b.weight,
                        "latents": b.latents,
                        "scenes": [
                            [s.colour, s.shape, s.background, s.size, s.position, s.style] for s in b.scenes
                        ],
                    }
                    for b in buckets
                ],
            },
            cached,
        )
    vae.register_to_config(scaling_factor=scale)
    for b in buckets:
        b.latents *= scale
    ema_unet, ema_text = train_unet(unet, text_encoder, tokenizer, buckets, cfg, work)
    card = {
        "config": asdict(cfg),
        "vae_gate": gate,
        **({"init": json.loads((init / "training.json").read_text())} if init else {}),
        "latent_scaling_factor": scale,
        "seconds": {"vae": round(t_vae), "total": round(time.monotonic() - t0)},
        "torch": torch.__version__,
    }
    save_pipeline(vae, ema_unet, ema_text, tokenizer, out, card)
    log.info("wrote the toy-world model to %s", out)
    return card


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toyworld train", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (CI smoke test)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoints in the work folder"
    )
    parser.add_argument("--work", type=Path, help="checkpoint folder (default: beside OUT)")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default 1: fastest on a shared 2-core CPU)"
    )
    parser.add_argument(
        "--gate-accuracy", type=float, help="the judge's least accuracy on VAE reconstructions"
    )
    parser.add_argument("--init", type=Path, help="train on from this toy-world model (its VAE is kept)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="any TrainConfig field"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    cfg = replace(QUICK if args.quick else TrainConfig(), seed=args.seed)
    overrides = {
        k: v
        for k, v in (
            ("vae_steps", args.vae_steps),
            ("unet_steps", args.unet_steps),
            ("threads", args.threads),
            ("gate_accuracy", args.gate_accuracy),
        )
        if v is not None
    }
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            parser.error(f"--set {item}: no such field; fields: {', '.join(fields)}")
        overrides[name] = {"int": int, "float": float}[fields[name]](value)
    cfg = replace(cfg, **overrides)
    work = args.work or args.out.parent / f".{args.out.name}-work"
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    train(args.out, cfg, work, args.init)
