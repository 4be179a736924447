"""gen_core.imagic on the tiny model: the three stages, re-mixing, the cache, and engine hygiene."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from gen_core import imagic
from gen_core.engine import Engine
from gen_core.types import Cancelled, EngineConfig, GenerationRequest

SIZE = 64
PRESET = imagic.ImagicPreset("test", embed_steps=40, embed_lr=5e-2, tune_steps=150, tune_lr=1e-2, lora_rank=8)


def picture() -> Image.Image:
    blocks = np.random.default_rng(0).integers(0, 255, (8, 8, 3))
    return Image.fromarray(np.kron(blocks, np.ones((SIZE // 8, SIZE // 8, 1))).astype(np.uint8))


def request(**changes) -> GenerationRequest:
    base = GenerationRequest(prompt="a red cake", width=SIZE, height=SIZE, steps=10, sampler="DDIM", seed=3, cfg=1.0)
    return dataclasses.replace(base, **changes)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", dtype="fp32"))


@pytest.fixture(scope="module")
def tuned(engine):
    return imagic.tune(engine, picture(), request(), PRESET)


def unet_snapshot(engine: Engine) -> tuple:
    unet = engine.unet
    return (
        {n: p.requires_grad for n, p in unet.named_parameters()},
        unet.training,
        [type(m).__name__ for m in unet.modules()],
    )


def test_stage_one_lowers_the_embedding_loss(engine, tuned):
    state, log = tuned
    latents = imagic.encode_image(engine, picture(), SIZE, SIZE)
    assert imagic.reconstruction_loss(engine, latents, state.e_opt) < imagic.reconstruction_loss(engine, latents, state.e_tgt)
    assert not torch.equal(state.e_opt, state.e_tgt) and len(log.embed_losses) == PRESET.embed_steps


def test_stage_two_lowers_the_reconstruction_loss(engine, tuned):
    state, log = tuned
    latents = imagic.encode_image(engine, picture(), SIZE, SIZE)
    untuned = imagic.reconstruction_loss(engine, latents, state.e_opt)
    with imagic.attached(engine, state):
        tuned_loss = imagic.reconstruction_loss(engine, latents, state.e_opt)
    assert tuned_loss < untuned - 0.03
    assert np.mean(log.tune_losses[-20:]) < np.mean(log.tune_losses[:20])


def test_eta_zero_reconstructs_better_than_img2img(engine, tuned):
    state, _ = tuned
    source = picture()
    edit = imagic.remix(engine, state, [request()], [0.0])[0].images[0].image
    img2img = engine.generate(request(init_image=source, strength=1.0)).images[0].image
    assert imagic.psnr(source, edit) > imagic.psnr(source, img2img)


def test_remix_runs_no_optimisation_and_is_deterministic(engine, tuned, monkeypatch):
    state, _ = tuned
    steps = []
    original = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    imagic.optimise_embedding(engine, imagic.encode_image(engine, picture(), SIZE, SIZE), state.e_tgt, PRESET.with_steps(2, 0))
    assert len(steps) == 2  # the counter sees optimisation when there is some
    first = imagic.remix(engine, state, [request(seed=11), request(seed=11)], [0.7, 1.1])
    again = imagic.remix(engine, state, [request(seed=11), request(seed=11)], [0.7, 1.1])
    assert len(steps) == 2
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))  # η changes the picture
    assert first[1].images[0].parameters["Imagic eta"] == 1.1


def test_adapters_leave_the_shared_engine_unchanged(engine, tuned):
    state, _ = tuned
    before_pixels = pixels(engine.generate(request(prompt="a cat", seed=5)))
    before = unet_snapshot(engine)
    imagic.tune(engine, picture(), request(), PRESET.with_steps(2, 2))
    imagic.remix(engine, state, [request()], [0.7])
    assert unet_snapshot(engine) == before
    assert "LoraLayer" not in str(engine.unet) and not getattr(engine.unet, "_hf_peft_config_loaded", False)
    assert all(p.grad is None for p in engine.unet.parameters())
    assert np.array_equal(pixels(engine.generate(request(prompt="a cat", seed=5))), before_pixels)


def test_cancel_between_steps_cleans_up(engine):
    before = unet_snapshot(engine)
    cancel = threading.Event()
    stages = []

    def progress(p):
        stages.append(p.stage)
        if p.stage == imagic.STAGE_TUNE and p.step == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        imagic.tune(engine, picture(), request(), PRESET.with_steps(3, 10), progress=progress, cancel=cancel)
    assert stages == [imagic.STAGE_EMBED] * 3 + [imagic.STAGE_TUNE] * 2
    assert unet_snapshot(engine) == before


def test_state_round_trip_and_size_bounded_cache(tmp_path, tuned):
    state, _ = tuned
    size = state.nbytes
    cache = imagic.TunedCache(tmp_path / "states", max_bytes=int(size * 2.5))
    for key in (1, 2):
        assert cache.put(key, state)
    assert cache.get(1) is not None  # 1 is now the most recently used
    assert cache.put(3, state)
    assert cache.get(2) is None and cache.path(1).is_file() and cache.path(3).is_file()
    loaded = cache.get(3)
    assert loaded.lora_rank == state.lora_rank and loaded.meta == state.meta
    assert torch.equal(loaded.e_opt, state.e_opt) and loaded.adapter.keys() == state.adapter.keys()
    assert all(torch.equal(loaded.adapter[k], v) for k, v in state.adapter.items())
    assert not imagic.TunedCache(tmp_path / "small", max_bytes=size // 2).put(1, state)
    (cache.directory / "9.safetensors.tmp").write_bytes(b"partial")
    cache.max_bytes = int(size * 1.5)
    cache.cleanup()
    assert len(list(cache.directory.iterdir())) == 1


def test_presets_price_their_work():
    assert imagic.QUALITY.work_steps > 5 * imagic.FAST.work_steps
    assert imagic.FAST.with_steps(10, 20).work_steps == 45
