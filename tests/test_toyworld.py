"""The toy world: its pictures, captions and judge, and the trainer's reproducibility."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from toyworld import MODEL_DIR
from toyworld.judge import colour_share, judge
from toyworld.train import QUICK, TrainConfig, caption_scene, to_tensor, train
from toyworld.world import (
    COLOURS,
    SHAPES,
    Scene,
    canonical_caption,
    caption,
    draw,
    held_out_combinations,
    is_held_out,
    random_scene,
)

ATTRIBUTES = ("background", "colour", "shape", "size", "position", "style")


def test_judge_reads_the_generator_ground_truth():
    rng = random.Random(1)
    scenes = [random_scene(rng, held_out=i % 3 == 0) for i in range(240)]
    verdicts = [judge(draw(s, jitter=rng)) for s in scenes]
    for attribute in ATTRIBUTES:
        right = sum(getattr(v, attribute) == getattr(s, attribute) for s, v in zip(scenes, verdicts, strict=True))
        assert right / len(scenes) >= 0.96, (attribute, right)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (256, 256)])
def test_judge_works_at_any_size(size):
    scene = Scene("yellow", "triangle", "black", size="large", position="top left")
    verdict = judge(draw(scene, *size))
    assert (verdict.colour, verdict.shape, verdict.background, verdict.position) == (
        "yellow", "triangle", "black", "top left"
    )


def test_judge_sees_no_object_on_a_blank_picture():
    blank = draw(Scene("red", "circle", "blue", size="small")).copy()
    blank.paste((35, 70, 225), (0, 0, 64, 64))
    verdict = judge(blank)
    assert verdict.background == "blue" and verdict.colour is None and verdict.object_fraction < 0.01


def test_stripes_score_above_plain_and_colour_share():
    plain = judge(draw(Scene("red", "square", "blue")))
    striped = judge(draw(Scene("red", "square", "blue", style="striped")))
    assert striped.style == "striped" and plain.style == "plain"
    assert striped.stripe_score > plain.stripe_score + 0.2
    picture = draw(Scene("red", "square", "blue"))
    assert 0.1 < colour_share(picture, "red") < 0.3 and colour_share(picture, "green") == 0


def test_captions_are_plain_english():
    scene = Scene("red", "circle", "blue", size="small", position="top left", style="striped")
    assert canonical_caption(scene) == "a small striped red circle at the top left on a blue background"
    rng = random.Random(0)
    texts = {caption(scene, rng) for _ in range(200)}
    assert "a striped red circle on a blue background" in texts or "a red circle on a blue background" in texts
    assert all("red" in t and "circle" in t and "blue background" in t for t in texts)
    assert caption(Scene("orange", "square", "white"), random.Random(3)).startswith(("an ", "a ", "orange", "large"))


def test_held_out_combinations_never_appear_in_training():
    held = held_out_combinations()
    assert 10 <= len(held) <= len(COLOURS) * (len(COLOURS) - 1) * len(SHAPES) // 4
    rng = random.Random(5)
    for _ in range(500):
        s = random_scene(rng)
        assert not is_held_out(s.colour, s.shape, s.background)
    s = random_scene(rng, held_out=True)
    assert (s.colour, s.shape, s.background) in held


def _weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_quick_training_is_deterministic_and_loads_as_sd(tmp_path):
    from diffusers import StableDiffusionPipeline

    cfg = replace(QUICK, vae_steps=4, unet_steps=4, dataset=32)
    train(tmp_path / "a", cfg, tmp_path / "work-a")
    train(tmp_path / "b", cfg, tmp_path / "work-b")
    train(tmp_path / "c", replace(cfg, seed=1), tmp_path / "work-c")
    assert _weights_digest(tmp_path / "a") == _weights_digest(tmp_path / "b")
    assert _weights_digest(tmp_path / "a") != _weights_digest(tmp_path / "c")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a")
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on its own latents
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.num_hidden_layers >= 2  # clip skip 2 exists
    assert_posterior_is_its_mean(pipe.vae)


def test_training_on_from_a_model_keeps_its_vae_and_scale(tmp_path):
    from safetensors.torch import load_file

    cfg = replace(QUICK, vae_steps=4, unet_steps=4, dataset=32)
    train(tmp_path / "a", cfg, tmp_path / "work-a")
    train(tmp_path / "b", replace(cfg, offset_noise_min_t=500), tmp_path / "work-b", init=tmp_path / "a")

    def weights(model: str, part: str) -> dict:
        [file] = (tmp_path / model / part).glob("*.safetensors")
        return load_file(file)

    assert all(torch.equal(t, weights("b", "vae")[k]) for k, t in weights("a", "vae").items())
    assert any(not torch.equal(t, weights("b", "unet")[k]) for k, t in weights("a", "unet").items())
    card = json.loads((tmp_path / "b" / "training.json").read_text())
    assert card["config"]["offset_noise_min_t"] == 500 and card["init"]["config"]["offset_noise_min_t"] == 0
    assert card["latent_scaling_factor"] == json.loads((tmp_path / "a" / "training.json").read_text())["latent_scaling_factor"]


def assert_posterior_is_its_mean(vae) -> None:
    """Pipelines that sample the VAE's posterior (inpaint) must get the mean the decoder learnt from."""
    with torch.no_grad():
        posterior = vae.encode(to_tensor([draw(Scene("red", "circle", "white"))])).latent_dist
    assert float(posterior.std.max()) < 1e-3 and float(posterior.mean.std()) > 0.1


def test_the_shipped_model_encodes_pictures_deterministically():
    from diffusers import AutoencoderKL

    assert_posterior_is_its_mean(AutoencoderKL.from_pretrained(MODEL_DIR, subfolder="vae"))


def test_captions_below_low_t_can_be_dropped_or_name_another_pictures_colours():
    scenes = [Scene(c, s, "white", style=st) for c, s, st in
              (("red", "circle", "striped"), ("green", "square", "plain"), ("blue", "triangle", "outlined"))]  # fmt: skip
    cfg = TrainConfig(caption_dropout=0.0, low_t=400, low_t_caption_dropout=0.25, low_t_wrong_colours=1.0)
    rng = random.Random(0)
    high = [caption_scene(scenes, 0, False, cfg, rng) for _ in range(400)]
    low = [caption_scene(scenes, 0, True, cfg, rng) for _ in range(400)]
    assert all(s is scenes[0] for s in high)  # above low_t: its own caption (no dropout here)
    dropped = sum(s is None for s in low) / len(low)
    assert 0.18 < dropped < 0.32  # below: dropped at low_t_caption_dropout, else with a random picture's colours
    named = [s for s in low if s is not None]
    assert {s.colour for s in named} == {"red", "green", "blue"}
    assert all((s.shape, s.style) == ("circle", "striped") for s in named)  # the rest is its own
    plain = TrainConfig(caption_dropout=0.0, low_t=400, low_t_caption_dropout=0.0)
    assert all(caption_scene(scenes, 2, True, plain, rng) is scenes[2] for _ in range(50))  # off by default
