"""LoRA files in each key layout (kohya/A1111, diffusers, PEFT), built here from random PEFT adapters of
the tiny models: they change the output, several combine with weights, the model is exactly as before
afterwards, a file for another family or a damaged one is refused, and nothing is unpickled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save

from gen_core import lora
from gen_core.engine import Engine
from gen_core.prompts import strip_extra_networks
from gen_core.types import EngineConfig, GenerationRequest

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_sdxl_dir)))


def unet_lora(like, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """Random LoRA weights for the attention projections of a UNet shaped like ``like`` (a separate
    copy: the engine's UNet is never touched by the test), PEFT module names (no prefix)."""
    torch.manual_seed(seed)
    unet = type(like).from_config(like.config)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False))
    return {k: v.detach().clone() * 4 for k, v in get_peft_model_state_dict(unet).items()}


def as_layout(state: dict[str, torch.Tensor], layout: str) -> bytes:
    if layout == "diffusers":
        return save({f"unet.{k}": v for k, v in state.items()})
    if layout == "peft":
        return save({f"base_model.model.{k}": v for k, v in state.items()})
    out = {}  # kohya / A1111: lora_unet_<module path with underscores>.lora_down/.lora_up/.alpha
    for key, value in state.items():
        module, kind = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
        if kind.startswith("A"):
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    return save(out)


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(data)
    return str(path)


def render(engine, *uses, prompt="a cat sitting on a chair", seed=11):
    size = engine.geometry.native // 2
    req = GenerationRequest(prompt, width=size, height=size, steps=4, seed=seed, loras=tuple(uses))
    return np.asarray(engine.generate(req).images[0].image, dtype=np.int16)


@pytest.mark.parametrize("layout", lora.LAYOUTS)
def test_each_layout_changes_the_output_and_detaches_cleanly(engine, tmp_path, layout):
    data = as_layout(unet_lora(engine.unet, seed=1), layout)
    info = lora.inspect(data)
    assert info.layout == layout and info.rank == 4 and info.context_width == 32 and not info.text_encoder
    plain = render(engine)
    styled = render(engine, lora.LoraUse(write(tmp_path, layout, data)))
    assert np.abs(styled - plain).mean() > 2
    np.testing.assert_array_equal(render(engine), plain)  # exactly as before


def test_layouts_of_the_same_weights_give_the_same_image(engine, tmp_path):
    state = unet_lora(engine.unet, seed=2)
    images = [render(engine, lora.LoraUse(write(tmp_path, f"same-{lay}", as_layout(state, lay)))) for lay in lora.LAYOUTS]
    for other in images[1:]:
        assert np.abs(other - images[0]).max() <= 2


def test_weights_and_several_at_once(engine, tmp_path, tiny_model_dir):
    a = write(tmp_path, "a", as_layout(unet_lora(engine.unet, seed=3), "kohya"))
    b = write(tmp_path, "b", as_layout(unet_lora(engine.unet, seed=4), "diffusers"))
    plain = render(engine)
    # identical pixels to a model that never saw a LoRA
    np.testing.assert_array_equal(render(Engine.load(EngineConfig(model_path=str(tiny_model_dir)))), plain)
    np.testing.assert_array_equal(render(engine, lora.LoraUse(a, 0.0, 0.0)), plain)  # weight 0 = off
    only_a, both = render(engine, lora.LoraUse(a)), render(engine, lora.LoraUse(a), lora.LoraUse(b, 0.8))
    assert np.abs(both - only_a).mean() > 1 and np.abs(only_a - plain).mean() > 1
    assert len(engine.loras.loaded) >= 2  # kept warm
    np.testing.assert_array_equal(render(engine), plain)


def test_requests_with_different_sets_never_share_a_batch(engine, tmp_path):
    a = write(tmp_path, "batch", as_layout(unet_lora(engine.unet, seed=5), "peft"))
    size = engine.geometry.native // 2
    plain = GenerationRequest("a cat", width=size, height=size, steps=4, seed=1)
    styled = GenerationRequest("a cat", width=size, height=size, steps=4, seed=1, loras=(lora.LoraUse(a),))
    assert engine.pipeline_key(plain) != engine.pipeline_key(styled)
    together = engine.generate_batch([plain, styled, plain])
    alone = [engine.generate(r) for r in (plain, styled)]
    for got, ref in zip(together, [alone[0], alone[1], alone[0]], strict=True):
        diff = np.abs(np.asarray(got.images[0].image, np.int16) - np.asarray(ref.images[0].image, np.int16))
        assert diff.max() <= 2
    assert np.abs(np.asarray(together[0].images[0].image, np.int16) - np.asarray(together[1].images[0].image, np.int16)).mean() > 2


def test_cache_is_size_bounded(engine, tmp_path):
    files = [write(tmp_path, f"c{i}", as_layout(unet_lora(engine.unet, seed=10 + i), "diffusers")) for i in range(3)]
    small = lora.LoraAdapters(engine, max_bytes=len(open(files[0], "rb").read()) + 1)
    engine.loras, saved = small, engine.loras
    try:
        for f in files:
            render(engine, lora.LoraUse(f))
            assert len(small.loaded) == 1
    finally:
        engine.loras = saved


def test_sdxl_lora_on_sdxl_and_wrong_family_refused(engine, sdxl, tmp_path):
    xl = as_layout(unet_lora(sdxl.unet, seed=6), "kohya")
    assert lora.inspect(xl).context_width == 96
    plain = render(sdxl)
    assert np.abs(render(sdxl, lora.LoraUse(write(tmp_path, "xl", xl))) - plain).mean() > 2
    np.testing.assert_array_equal(render(sdxl), plain)
    with pytest.raises(lora.LoraError, match="context width 96"):
        render(engine, lora.LoraUse(write(tmp_path, "xl-on-sd1", xl)))
    sd1 = as_layout(unet_lora(engine.unet, seed=7), "diffusers")
    with pytest.raises(lora.LoraError, match="context width 32"):
        lora.check_fits(lora.inspect(sd1), sdxl.unet.config.cross_attention_dim)
    # the real families by name
    real = lora.LoraInfo("kohya", 2, 4, 768, False, {})
    with pytest.raises(lora.LoraError, match="made for an SD 1.x model .* is an SDXL model"):
        lora.check_fits(real, 2048)


def test_malformed_files_and_pickles_are_refused():
    with pytest.raises(lora.LoraError, match="too short"):
        lora.inspect(b"abc")
    with pytest.raises(lora.LoraError, match="header"):
        lora.inspect(b"\xff" * 64)
    import pickle

    with pytest.raises(lora.LoraError):
        lora.inspect(pickle.dumps({"lora_unet_x.lora_down.weight": [1.0]}))
    with pytest.raises(lora.LoraError, match="layout"):
        lora.inspect(save({"model.weight": torch.zeros(2)}))
    truncated = save({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)})[:-10]
    with pytest.raises(lora.LoraError, match="damaged"):
        lora.inspect(truncated)


def test_training_sessions_get_the_bare_model_and_loras_work_after(engine, tmp_path):
    from gen_core.training import training_session

    a = write(tmp_path, "train", as_layout(unet_lora(engine.unet, seed=8), "kohya"))
    styled = render(engine, lora.LoraUse(a))
    with training_session(engine) as unet:
        assert not getattr(unet, "_hf_peft_config_loaded", False) and engine.loras.loaded == []
    np.testing.assert_array_equal(render(engine, lora.LoraUse(a)), styled)


def test_tags_are_removed_from_the_text_and_read_as_a1111_does():
    text, tags = strip_extra_networks("a cat <lora:style:0.8> on a chair <lora:detail> <lora:x:0.2:0.7> <lora:y:unet=0.5>")
    assert text == "a cat on a chair"
    assert [(t.kind, t.name) for t in tags] == [("lora", "style"), ("lora", "detail"), ("lora", "x"), ("lora", "y")]
    weights = [lora.tag_weights(t.weights, t.named) for t in tags]
    assert weights == [(0.8, 0.8), (1.0, 1.0), (0.7, 0.2), (0.5, 1.0)]  # (unet, te): A1111 writes te first
    assert lora.tag_weights((), (("te", 0.3),)) == (0.3, 0.3)
    with pytest.raises(lora.LoraError, match="at most two"):
        lora.tag_weights((1, 1, 1))
    with pytest.raises(lora.LoraError, match="`dyn=` is not"):
        lora.tag_weights((), (("dyn", 4),))
