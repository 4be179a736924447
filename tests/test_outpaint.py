"""gen_core.outpaint on the tiny models: canvas sizes, exact preservation of the original pixels,
masks (from alpha, feathered), fills, chaining, and the 9-channel inpainting UNet path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gen_core import outpaint as op
from gen_core.engine import Engine
from gen_core.geometry import SD1
from gen_core.tiny import ensure_tiny_model
from gen_core.types import EngineConfig, GenerationRequest


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def inpaint_engine(tiny_model_dir, tmp_path_factory) -> Engine:
    path = ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-inpaint", inpainting=True)
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir), inpaint_path=str(path)))


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def outpaint(engine, image: Image.Image, direction: str, pixels: int = 64, blur: int = 8, count: int = 2, seed: int = 3):
    plan = op.plan_outpaint(image.size, direction, pixels, 256 * 256, SD1)
    canvas, mask = op.outpaint_inputs(image, plan, blur, seed=seed)
    req = GenerationRequest(
        prompt="a landscape", width=plan.canvas[0], height=plan.canvas[1], steps=2, seed=seed, count=count,
        init_image=canvas, strength=1.0,
    )
    return plan, mask, op.inpaint_batch(engine, [op.InpaintRequest(req, mask)])[0]


@pytest.mark.parametrize(
    ("direction", "canvas", "box"),
    [
        ("left", (256, 128), (64, 0, 192, 128)),
        ("right", (256, 128), (0, 0, 192, 128)),
        ("up", (192, 192), (0, 64, 192, 128)),
        ("down", (192, 192), (0, 0, 192, 128)),
        ("zoom1.5", (320, 192), (64, 32, 192, 128)),
        ("zoom2", (384, 256), (96, 64, 192, 128)),
    ],
)
def test_plan_sizes_for_every_direction_and_zoom(direction, canvas, box):
    plan = op.plan_outpaint((192, 128), direction, 64, 512 * 512, SD1)
    assert plan.canvas == canvas and plan.box == box and not plan.downscaled
    assert plan.canvas[0] % 64 == 0 and plan.canvas[1] % 64 == 0


def test_plan_snaps_and_downscales_within_the_area_limit():
    plan = op.plan_outpaint((200, 100), "right", 30, 512 * 512, SD1)
    assert plan.canvas == (256, 128) and plan.box == (0, 14, 200, 100)  # slack right; vertical slack split
    big = op.plan_outpaint((512, 768), "right", 256, 512 * 768, SD1)
    assert big.downscaled and big.canvas[0] * big.canvas[1] <= 512 * 768
    x, y, w, h = big.box
    assert w < 512 and x == 0 and x + w < big.canvas[0]
    with pytest.raises(ValueError, match="Unknown direction"):
        op.plan_outpaint((64, 64), "sideways", 64, 512 * 512, SD1)


def test_feathered_mask_is_soft_in_the_band_and_zero_beyond():
    hard = Image.new("L", (64, 32), 0)
    hard.paste(255, (48, 0, 64, 32))
    soft = np.asarray(op.feather_mask(hard, 8))
    assert (soft[:, 48:] == 255).all()
    assert (soft[:, :40] == 0).all()  # beyond the 8-pixel band: exactly kept
    band = soft[:, 40:48]
    assert band.min() > 0 or band.max() < 255
    assert 0 < soft[0, 44] < 255


def test_outpaint_keeps_original_pixels_exactly_and_per_image_seeds(engine):
    src = picture(192, 128)
    plan, mask, images = outpaint(engine, src, "right")
    assert [g.seed for g in images] == [3, 4]
    out = np.asarray(images[0].image)
    assert images[0].image.size == plan.canvas == (256, 128)
    keep = np.asarray(mask) == 0
    x, y, w, h = plan.box
    assert keep[:, : w - 8].all() and not keep[:, w:].any()
    assert (out[y : y + h, x : x + w - 8] == np.asarray(src)[:, : w - 8]).all()
    assert not (np.asarray(images[0].image)[:, w:] == np.asarray(images[1].image)[:, w:]).all()
    assert images[0].parameters["width"] == 256


def test_outpaint_fill_is_not_flat():
    plan = op.plan_outpaint((64, 64), "zoom2", 0, 512 * 512, SD1)
    canvas, _ = op.outpaint_inputs(picture(64, 64), plan, 8)
    border = np.asarray(canvas)[:, :32].astype(float)
    assert border.std() > 5


def test_chaining_twice_keeps_growing_and_keeps_pixels(engine):
    src = picture(128, 128)
    plan1, _, first = outpaint(engine, src, "left", count=1)
    plan2, mask2, second = outpaint(engine, first[0].image, "down", count=1)
    assert plan1.canvas == (192, 128) and plan2.canvas == (192, 192)
    keep = np.asarray(mask2) == 0
    assert (np.asarray(second[0].image)[keep] == np.asarray(first[0].image)[keep[:128]]).all()
    assert (np.asarray(second[0].image)[:120, 72:] == np.asarray(src)[:120, 8:]).all()  # outside both bands


def test_inpaint_leaves_unmasked_pixels_untouched_at_any_size(engine):
    src = picture(150, 100, seed=1)  # not a multiple of 8: generated at 128x64-ish, composited back
    hard = Image.new("L", src.size, 0)
    hard.paste(255, (40, 30, 90, 70))
    soft = op.feather_mask(hard, 6)
    width, height = op.work_size(src.size, 256 * 256, SD1)
    for fill in op.FILLS:
        filled = op.fill_masked(src, hard, fill, seed=2)
        req = GenerationRequest(prompt="a cat", width=width, height=height, steps=2, seed=9, init_image=filled, strength=0.8)
        (out,) = op.inpaint_batch(engine, [op.InpaintRequest(req, soft)])[0]
        keep = np.asarray(soft) == 0
        assert out.image.size == src.size
        assert (np.asarray(out.image)[keep] == np.asarray(src)[keep]).all()
        assert not (np.asarray(out.image)[45:65, 50:80] == np.asarray(src)[45:65, 50:80]).all()


def test_mask_from_alpha_and_refusals():
    rgba = picture(64, 64).convert("RGBA")
    rgba.putalpha(Image.new("L", (64, 64), 255))
    alpha = rgba.getchannel("A")
    alpha.paste(0, (10, 10, 30, 30))
    rgba.putalpha(alpha)
    mask = np.asarray(op.inpaint_mask(rgba, None))
    assert mask[10:30, 10:30].all() and mask.sum() == 20 * 20 * 255
    with pytest.raises(op.MaskError, match="same size"):
        op.inpaint_mask(rgba, Image.new("L", (32, 32), 255))
    with pytest.raises(op.MaskError, match="empty"):
        op.inpaint_mask(rgba, Image.new("L", (64, 64), 0))
    with pytest.raises(op.MaskError, match="transparent"):
        op.inpaint_mask(picture(64, 64), None)


def test_nine_channel_inpainting_unet_is_used(inpaint_engine):
    pipe = op.inpaint_pipeline(inpaint_engine)
    assert pipe.unet.config.in_channels == 9 and pipe.vae is inpaint_engine.vae
    src = picture(128, 128)
    plan, mask, images = outpaint(inpaint_engine, src, "up", count=1)
    keep = np.asarray(mask) == 0
    canvas = op.outpaint_inputs(src, plan, 8, seed=3)[0]
    assert (np.asarray(images[0].image)[keep] == np.asarray(canvas)[keep]).all()
    assert images[0].image.size == (128, 192)
