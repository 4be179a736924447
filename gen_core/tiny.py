"""Build a tiny, randomly initialised Stable Diffusion pipeline for tests and the sandbox.

The model has the diffusers layout of a real SD 1.x checkpoint (UNet with cross-attention,
a VAE with the usual 8x downscale, a CLIP text encoder and tokenizer) but only a few MB of
random weights.  The tokenizer uses the real CLIP BPE vocabulary, so token counts, chunking
and emphasis behave exactly as with a real checkpoint.  Nothing is downloaded: the vocabulary
comes from the ``open-clip-torch`` wheel (installed with ``--no-deps``), located without
importing that package.

``family="sdxl"`` builds the SDXL layout instead: two text encoders (CLIP-L style and a wider
bigG-style one with a projection for the pooled embedding, its tokenizer padding with ``!`` as
SDXL's does), a UNet with size conditioning (``addition_embed_type="text_time"``), a VAE with SDXL's
latent scale and fp16 upcast flag, at a 256-px native size so CPU tests stay fast.

Usage: ``python -m gen_core.tiny OUT_DIR [--family sd1|sdxl] [--seed N] [--inpainting]``
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

VOCAB_ENV = "CLIP_BPE_VOCAB"
VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the BPE file.
_N_MERGES = 49152 - 256 - 2


def find_clip_vocab() -> Path:
    """Locate CLIP's BPE vocabulary file (env ``CLIP_BPE_VOCAB`` or the open_clip wheel)."""
    env = os.environ.get(VOCAB_ENV)
    if env:
        return Path(env)
    spec = importlib.util.find_spec("open_clip")  # finds the package without executing it
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / VOCAB_FILENAME
            if candidate.exists():
                return candidate
    raise FileNotFoundError(
        f"CLIP BPE vocabulary not found. Install it with `pip install --no-deps open-clip-torch` "
        f"or set {VOCAB_ENV} to a copy of {VOCAB_FILENAME}."
    )


def _byte_alphabet() -> list[str]:
    """The 256 stand-in characters CLIP's byte-level BPE uses, in CLIP's vocabulary order.

    Printable bytes map to themselves and come first; the others map to chr(256 + n) in byte order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def write_clip_tokenizer_files(out_dir: Path, vocab_gz: Path | None = None) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face CLIPTokenizer format)."""
    lines = gzip.open(vocab_gz or find_clip_vocab(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    alphabet = _byte_alphabet()
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def load_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A ``CLIPTokenizer`` with CLIP's real BPE vocabulary, built offline.

    The default pads with the end token (SD 1.x, SDXL's first tokenizer); SDXL's second (OpenCLIP)
    tokenizer pads with ``"!"`` (id 0).
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(Path(tmp))
        (Path(tmp) / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "CLIPTokenizer",
                    "model_max_length": 77,
                    "bos_token": "<|startoftext|>",
                    "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>",
                    "pad_token": pad_token,
                }
            )
        )
        return CLIPTokenizer.from_pretrained(tmp)


FAMILIES = ("sd1", "sdxl")


def _tiny_vae(seed: int, sample_size: int, **extra):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size,
        **extra,
    )


def clip_text_config(hidden: int, layers: int, pad_id: int, projection: int, intermediate: int | None = None):
    """A small CLIP text encoder's config over CLIP's real BPE vocabulary (its token ids are SD's);
    the MLP is ``intermediate`` wide (default twice ``hidden``)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_id,
        hidden_act="quick_gelu",
        projection_dim=projection,
    )


def sd1_scheduler():
    """SD 1.x's own noise schedule and scheduler config (the tiny models' and the toy-world model's), so every
    sampler the engine offers behaves as on a real checkpoint."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_pipeline(seed: int = 0, inpainting: bool = False, family: str = "sd1"):
    """Return a tiny randomly initialised pipeline of ``family`` (not saved)."""
    if family == "sdxl":
        return _build_tiny_sdxl(seed, inpainting)
    if family != "sd1":
        raise ValueError(f"tiny models exist for {', '.join(FAMILIES)}; not {family!r}")
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_dim = 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        # Attention only at the coarsest level (16x16 latents for 512x512) keeps a 512px
        # 20-step image at about a second on two CPU cores.
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = _tiny_vae(seed + 1, 512)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(clip_text_config(text_dim, 3, 49407, text_dim))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(),
        unet=unet,
        scheduler=sd1_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# SDXL's layout in miniature: encoder widths 32 + 64 concatenate to the UNet's 96-wide context;
# the pooled embedding (projection of the second encoder, 32) and six size numbers (8 each) feed the
# added embedding, as 1280 + 6 x 256 = 2816 do in the real model.
_XL_TEXT, _XL_TEXT_2, _XL_POOLED, _XL_TIME = 32, 64, 32, 8


def _build_tiny_sdxl(seed: int, inpainting: bool):
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_XL_TIME,
        projection_class_embeddings_input_dim=6 * _XL_TIME + _XL_POOLED,
        cross_attention_dim=_XL_TEXT + _XL_TEXT_2,
        norm_num_groups=8,
    )
    vae = _tiny_vae(seed + 1, 256, scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(clip_text_config(_XL_TEXT, 3, 49407, _XL_TEXT))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(_XL_TEXT_2, 4, 0, _XL_POOLED))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=load_clip_tokenizer(),
        tokenizer_2=load_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=sd1_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


def write_tiny_model(out_dir: str | Path, seed: int = 0, inpainting: bool = False, family: str = "sd1") -> Path:
    """Build the tiny model and save it in diffusers layout to ``out_dir`` (atomically)."""
    out = Path(out_dir)
    pipe = build_tiny_pipeline(seed=seed, inpainting=inpainting, family=family)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote tiny model to %s", out)
    return out


def ensure_tiny_model(out_dir: str | Path, seed: int = 0, inpainting: bool = False, family: str = "sd1") -> Path:
    """Return ``out_dir``, building the tiny model there first if it is not present."""
    out = Path(out_dir)
    if not (out / "model_index.json").exists():
        write_tiny_model(out, seed=seed, inpainting=inpainting, family=family)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random Stable Diffusion model (diffusers layout).")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inpainting", action="store_true", help="9-channel inpainting UNet")
    parser.add_argument("--family", choices=FAMILIES, default="sd1", help="model layout (default: sd1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    write_tiny_model(args.out_dir, seed=args.seed, inpainting=args.inpainting, family=args.family)


if __name__ == "__main__":
    main()
