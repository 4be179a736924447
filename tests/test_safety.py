"""The image safety checkers: they load and run offline, flag no ordinary picture, and the configured
mode picks, forces or turns off a checker clearly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gen_core.safety import DiffusersChecker, NudeNetChecker, SafetyCheckerError, load_checker
from services.config import ConfigError, build_config


def ordinary_pictures() -> list[Image.Image]:
    """Shapes on plain backgrounds (what the toy-world model draws), noise and a gradient."""
    out = []
    for bg, fg, box in [((30, 60, 200), (220, 30, 30), (100, 100, 400, 400)), ((250, 250, 250), (20, 150, 40), (50, 200, 450, 300)),
                        ((0, 0, 0), (255, 220, 0), (200, 50, 300, 450)), ((120, 80, 60), (240, 200, 170), (150, 100, 350, 450))]:  # fmt: skip
        image = Image.new("RGB", (512, 512), bg)
        ImageDraw.Draw(image).ellipse(box, fill=fg)
        out.append(image)
    out.append(Image.fromarray((np.random.default_rng(0).random((256, 384, 3)) * 255).astype(np.uint8)))
    out.append(Image.linear_gradient("L").convert("RGB"))
    return out


@pytest.fixture(scope="module")
def nudenet() -> NudeNetChecker:
    return NudeNetChecker()


def test_nudenet_runs_offline_and_flags_no_ordinary_picture(nudenet):
    assert [nudenet(image) for image in ordinary_pictures()] == [False] * 6
    assert all(isinstance(d["score"], float) for image in ordinary_pictures()[:1] for d in nudenet.detections(image))


def tiny_safety_checker(folder) -> None:
    """A checkpoint folder with a small random-weight StableDiffusionSafetyChecker and its feature extractor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 4},
        projection_dim=16,
    )  # fmt: skip
    StableDiffusionSafetyChecker(config).save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder / "feature_extractor")


def test_the_checkpoints_checker_is_preferred_and_runs(tmp_path):
    tiny_safety_checker(tmp_path)
    checker = load_checker("auto", tmp_path)
    assert isinstance(checker, DiffusersChecker) and checker.name.startswith("diffusers")
    assert [checker(image) for image in ordinary_pictures()] == [False] * 6
    assert isinstance(load_checker("diffusers", tmp_path), DiffusersChecker)


def test_modes(tmp_path):
    assert load_checker("false", tmp_path) is None
    assert isinstance(load_checker("auto", tmp_path), NudeNetChecker)  # no safety_checker/ in the folder
    assert isinstance(load_checker("nudenet", None), NudeNetChecker)
    with pytest.raises(SafetyCheckerError, match="safety_checker and .*feature_extractor"):
        load_checker("diffusers", tmp_path)
    (tmp_path / "safety_checker").mkdir()  # broken: auto falls back, a forced one stops
    assert isinstance(load_checker("auto", tmp_path), NudeNetChecker)
    with pytest.raises(SafetyCheckerError):
        load_checker("diffusers", tmp_path)


def test_config_values():
    assert build_config({}).moderation.image_check == "auto"
    assert build_config({"moderation": {"image_check": True}}).moderation.image_check == "auto"
    assert build_config({"moderation": {"image_check": False}}).moderation.image_check == "false"
    assert build_config({"moderation": {"image_check": "nudenet"}}).moderation.image_check == "nudenet"
    with pytest.raises(ConfigError, match="moderation.image_check = 'yes please': choose one of auto, diffusers, false, nudenet"):
        build_config({"moderation": {"image_check": "yes please"}})
