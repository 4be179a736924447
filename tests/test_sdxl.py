"""SDXL in the engine, on the tiny SDXL model: family detection, prompt encoding with both text
encoders (checked against a reference computed directly with the encoders and against diffusers'
own ``encode_prompt``), sizes, txt2img/img2img, and pixels equal to a bare diffusers SDXL call."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
from transformers import CLIPTokenizer

from gen_core.buckets import SDXL_BUCKETS, sdxl_buckets
from gen_core.engine import Engine
from gen_core.family import FamilyError, detect_family, resolve_family
from gen_core.geometry import SD1, SDXL, Geometry
from gen_core.prompts import PromptEncoder, PromptTooLong
from gen_core.types import EngineConfig, GenerationRequest
from tests.test_engine import unet_batch_sizes


@pytest.fixture(scope="module")
def engine(tiny_sdxl_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_sdxl_dir)))


def write_safetensors_header(path, names):
    """A safetensors file holding one-element tensors under ``names`` (enough for detection)."""
    header, offset = {}, 0
    for name in names:
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [offset, offset + 4]}
        offset += 4
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


# ----------------------------------------------------------------------------- the model and family


def test_tiny_sdxl_has_both_tokenizers_with_real_vocab(tiny_sdxl_dir):
    one = CLIPTokenizer.from_pretrained(tiny_sdxl_dir / "tokenizer")
    two = CLIPTokenizer.from_pretrained(tiny_sdxl_dir / "tokenizer_2")
    ids = [49406, 320, 1125, 539, 320, 2368, 267, 12066, 49407]
    assert one("a photo of a cat, masterpiece").input_ids == ids == two("a photo of a cat, masterpiece").input_ids
    assert one.pad_token_id == 49407 and two.pad_token_id == 0  # SDXL: bigG pads with "!"
    index = json.loads((tiny_sdxl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index


def test_family_of_folders(tiny_model_dir, tiny_sdxl_dir):
    assert detect_family(tiny_model_dir) == "sd1"
    assert detect_family(tiny_sdxl_dir) == "sdxl"
    assert resolve_family(tiny_sdxl_dir, "sdxl") == "sdxl"
    with pytest.raises(FamilyError, match="sdxl checkpoint"):
        resolve_family(tiny_sdxl_dir, "sd1")
    with pytest.raises(FamilyError, match="use auto"):
        resolve_family(tiny_sdxl_dir, "sd3")


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl"),
        ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "sd2"),
        ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "sd1"),
    ],
)
def test_family_of_single_files(tmp_path, key, family):
    path = write_safetensors_header(tmp_path / "model.safetensors", ["model.diffusion_model.input_blocks.0.0.weight", key])
    assert detect_family(path) == family
    assert resolve_family(path) == family
    expected = SDXL if family == "sdxl" else SD1
    assert Geometry.of_model(path) == expected


def test_family_setting_decides_only_where_the_file_cannot(tmp_path):
    path = write_safetensors_header(tmp_path / "unet-only.safetensors", ["model.diffusion_model.out.2.weight"])
    assert detect_family(path) is None
    assert resolve_family(path) == "sd1"
    assert resolve_family(path, "sdxl") == "sdxl"
    assert Geometry.of_model(path, "sdxl") == SDXL


# ----------------------------------------------------------------------------- sizes


def test_geometry_and_buckets_follow_the_model(engine, tiny_sdxl_dir):
    g = engine.geometry
    assert g == Geometry.of_model(tiny_sdxl_dir)
    assert (g.native, g.step, g.sdxl) == (256, 16, True)
    assert g.bucket_area == 256 * 256
    # SDXL's list scaled to the 256-px model: the same shapes at a sixteenth of the area.
    assert g.buckets() == sorted((w // 4, h // 4) for w, h in SDXL_BUCKETS)
    assert sdxl_buckets() == sorted(SDXL_BUCKETS)
    assert SDXL.buckets() == sorted(SDXL_BUCKETS) and SDXL.step == 64 and SDXL.bucket_area == 1024 * 1024


# ----------------------------------------------------------------------------- prompt encoding


def reference(engine, text: str, skip: int = 2):
    """SDXL's conditioning computed directly: each tokenizer pads to 77, ``hidden_states[-skip]`` of
    both encoders concatenated; the pooled output of the second."""
    pipe = engine.txt2img
    states, pooled = [], None
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        states.append(out.hidden_states[-skip])
        pooled = getattr(out, "text_embeds", None)
    return torch.cat(states, dim=-1), pooled


@torch.no_grad()
def test_plain_prompt_matches_both_encoders_directly(engine):
    text = "a photo of a cat, masterpiece, best quality"
    cond, uncond = engine.encoder.encode_pair(text, "lowres, blurry")
    ref, ref_pooled = reference(engine, text)
    ref_neg, ref_neg_pooled = reference(engine, "lowres, blurry")
    assert cond.shape == (1, 77, 96)
    torch.testing.assert_close(cond, ref)
    torch.testing.assert_close(uncond, ref_neg)
    pooled = engine.encoder.pooled_many([text, "lowres, blurry"])
    torch.testing.assert_close(pooled, torch.cat([ref_pooled, ref_neg_pooled]))
    # diffusers' own SDXL encoding agrees (its default is the same penultimate layer).
    embeds, neg, pool, neg_pool = engine.txt2img.encode_prompt(
        text, device="cpu", do_classifier_free_guidance=True, negative_prompt="lowres, blurry"
    )
    torch.testing.assert_close(cond, embeds)
    torch.testing.assert_close(uncond, neg)
    torch.testing.assert_close(pooled, torch.cat([pool, neg_pool]))


@torch.no_grad()
def test_clip_skip_counts_layers_from_the_end_without_final_norm(engine):
    ref, _ = reference(engine, "a cat", skip=1)
    torch.testing.assert_close(engine.encoder.encode("a cat", clip_skip=1), ref)
    ref3, _ = reference(engine, "a cat", skip=3)
    torch.testing.assert_close(engine.encoder.encode("a cat", clip_skip=3), ref3)
    assert engine.encoder.max_clip_skip == 3  # the shallower encoder's depth
    with pytest.raises(ValueError, match="Clip skip"):
        engine.resolve(GenerationRequest("a cat", width=256, height=256, clip_skip=4))


@torch.no_grad()
def test_emphasis_and_break_follow_a1111_in_each_encoder(engine):
    pipe, enc = engine.txt2img, engine.encoder
    per_encoder = [
        PromptEncoder(tok, te, final_norm=False)
        for tok, te in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
    ]
    text = "a (red:1.4) circle, [blue] background BREAK sunset"
    out = enc.encode(text)
    assert out.shape == (1, 154, 96)  # BREAK: two chunks
    torch.testing.assert_close(out, torch.cat([p.encode(text) for p in per_encoder], dim=-1))
    plain = enc.encode("a red circle, blue background BREAK sunset")
    assert not torch.allclose(out, plain)
    # Emphasis is syntax for the hidden states only: the pooled embedding sees the same tokens.
    torch.testing.assert_close(enc.pooled_many([text]), enc.pooled_many(["a red circle, blue background BREAK sunset"]))
    cond, uncond = enc.encode_pair("word " * 100, "short")
    assert cond.shape == uncond.shape == (1, 154, 96)
    with pytest.raises(PromptTooLong):
        enc.encode("word " * 300)


# ----------------------------------------------------------------------------- generation


def req(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle", "negative": "blurry", "width": 256, "height": 256, "steps": 3, "seed": 7}
    return GenerationRequest(**(base | kw))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def test_engine_equals_bare_diffusers_sdxl(engine, tiny_sdxl_dir):
    ours = engine.generate(req(sampler="Euler a", width=208, height=304))
    bare = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    bare.scheduler = EulerAncestralDiscreteScheduler.from_config(bare.scheduler.config)
    bare.set_progress_bar_config(disable=True)
    image = bare(
        "a red circle",
        negative_prompt="blurry",
        width=208,
        height=304,
        num_inference_steps=3,
        guidance_scale=7.0,
        generator=[torch.Generator("cpu").manual_seed(7)],
    ).images[0]
    assert ours.images[0].image.size == (208, 304)
    diff = np.abs(pixels(ours) - np.asarray(image, dtype=np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_size_conditioning_comes_from_the_bucket(engine):
    kwargs = engine.added_call_kwargs(engine.pooled_all([req()]), [1], 208, 304)
    assert kwargs["original_size"] == kwargs["target_size"] == (304, 208)
    assert kwargs["crops_coords_top_left"] == (0, 0)
    assert kwargs["pooled_prompt_embeds"].shape == (1, 32)


def test_batch_matches_alone_and_seeds_differ(engine):
    a, b = engine.generate_batch([req(), req(prompt="a blue square", seed=8)])
    alone = engine.generate(req(prompt="a blue square", seed=8))
    diff = np.abs(pixels(b) - pixels(alone))
    assert diff.max() <= 2 and diff.mean() < 0.05
    assert np.abs(pixels(a) - pixels(b)).mean() > 5


def test_img2img_on_sdxl(engine):
    """Strength ~0 gives the VAE round trip (the tiny VAE's, calibrated to unit-variance latents as
    in test_engine), higher strengths move away from it."""
    source = engine.generate(req()).images[0].image
    vae, processor = engine.vae, engine.img2img.image_processor
    with torch.no_grad():
        latents = engine.vae_encode(processor.preprocess(source)) / vae.config.scaling_factor
        roundtrip = processor.postprocess(vae.decode(latents).sample, output_type="pil")[0]
    original = vae.config.scaling_factor
    vae.register_to_config(scaling_factor=1.0 / float(latents.std()))
    try:
        diffs = {
            s: np.abs(pixels(engine.generate(req(init_image=source, strength=s, steps=20))) - np.asarray(roundtrip, dtype=np.int16)).mean()
            for s in (0.0, 0.5)
        }
    finally:
        vae.register_to_config(scaling_factor=original)
    assert diffs[0.0] < 4 and diffs[0.5] > 4 * diffs[0.0], diffs


def test_configured_vae_replaces_the_checkpoints(tiny_model_dir, tmp_path):
    """``[model] vae`` (SD 1.x's "new VAE" case): a diffusers VAE folder replaces the model's own."""
    from gen_core.tiny import build_tiny_pipeline

    build_tiny_pipeline(seed=5).vae.save_pretrained(tmp_path / "vae")
    own = Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu"))
    other = Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", vae=str(tmp_path / "vae")))
    assert other.txt2img.vae is other.img2img.vae
    assert not torch.equal(own.vae.encoder.conv_in.weight, other.vae.encoder.conv_in.weight)
    assert np.abs(pixels(own.generate(req(width=128, height=128))) - pixels(other.generate(req(width=128, height=128)))).mean() > 1


# ----------------------------------------------------------------------------- every feature on SDXL


def test_mix_blend_and_composable_on_sdxl(engine):
    from gen_core import mix

    base = req(prompt="", count=1)
    parts = [mix.MixPart("a red circle", 1.0), mix.MixPart("a blue square", 1.0)]
    for mode in mix.MODES:
        assert mix.generate_mix(engine, [mix.MixRequest(base, parts, mode)])[0].images[0].image.size == (256, 256)
        # One part of weight 1 is the plain prompt in both modes: hidden states, pooled embedding
        # and size conditioning reach the UNet as in the engine's own (diffusers') call.
        single = mix.generate_mix(engine, [mix.MixRequest(base, parts[:1], mode)])[0].images[0].image
        diff = np.abs(np.asarray(single, np.int16) - pixels(engine.generate(req())))
        assert diff.max() <= 2 and diff.mean() < 0.05, (mode, diff.max(), diff.mean())


def test_inpaint_on_sdxl_keeps_the_unmasked_pixels(engine):
    from PIL import Image

    from gen_core.outpaint import InpaintRequest, inpaint_batch

    source = engine.generate(req()).images[0].image
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (64, 64, 192, 192))
    out = inpaint_batch(engine, [InpaintRequest(req(init_image=source, strength=1.0, prompt="a cat"), mask)])[0][0]
    got, src = np.asarray(out.image, np.int16), np.asarray(source, np.int16)
    assert (got[:64] == src[:64]).all()
    assert np.abs(got[64:192, 64:192] - src[64:192, 64:192]).mean() > 5


def test_imagic_on_sdxl_optimises_the_embedding_with_the_pooled_text(engine):
    from gen_core import imagic

    source = engine.generate(req()).images[0].image
    preset = imagic.ImagicPreset("t", embed_steps=15, embed_lr=5e-2, tune_steps=2, tune_lr=1e-2, lora_rank=2)
    request = req(prompt="a red cake", sampler="DDIM", cfg=1.0)
    state, log = imagic.tune(engine, source, request, preset)
    latents = imagic.encode_image(engine, source, 256, 256)
    pooled = engine.pooled(["a red cake"])
    assert imagic.reconstruction_loss(engine, latents, state.e_opt, pooled=pooled) < imagic.reconstruction_loss(
        engine, latents, state.e_tgt, pooled=pooled
    )
    out = imagic.remix(engine, state, [request], [0.7])[0]
    assert out.images[0].image.size == (256, 256)


def test_hypernetwork_training_is_refused_clearly_on_sdxl(engine):
    from gen_core import hypernetwork

    source = engine.generate(req()).images[0].image
    with pytest.raises(hypernetwork.HypernetworkError, match="SDXL model. Use a LoRA"):
        hypernetwork.train(engine, "h", [source], ["a red circle"], engine.geometry.buckets())


def test_guidance_stops_below_its_noise_floor_on_sdxl(engine):
    """The unconditional halves of SDXL's pooled and size embeddings are dropped with the prompt's."""
    full_sizes, full = unet_batch_sizes(engine, req(steps=8))
    txt2img, floored = unet_batch_sizes(engine, req(steps=8, guidance_min_sigma=1.0))
    img2img, _ = unet_batch_sizes(engine, req(steps=8, guidance_min_sigma=1.0, init_image=full.image, strength=0.75))
    assert full_sizes == [2] * 8
    assert txt2img[0] == 2 and txt2img[-1] == 1 and txt2img == sorted(txt2img, reverse=True)
    assert img2img[-1] == 1 and len(img2img) == 6
    assert np.abs(np.asarray(full.image, np.int16) - np.asarray(floored.image, np.int16)).mean() > 0
