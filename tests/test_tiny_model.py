"""The tiny offline model: real CLIP vocabulary, diffusers layout, deterministic weights."""

import json

from transformers import CLIPTokenizer

from gen_core.tiny import build_tiny_pipeline, ensure_tiny_model


def test_tokenizer_uses_real_clip_vocabulary(tiny_model_dir):
    tok = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    assert len(tok) == 49408
    # Token ids of real SD 1.x's tokenizer for the same text.
    assert tok("a photo of a cat, masterpiece").input_ids == [49406, 320, 1125, 539, 320, 2368, 267, 12066, 49407]


def test_model_is_in_diffusers_layout(tiny_model_dir):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index
        assert (tiny_model_dir / part).is_dir()
    assert list((tiny_model_dir / "unet").glob("*.safetensors"))


def test_build_is_deterministic_per_seed():
    a, b, c = build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=4)
    wa, wb, wc = (p.unet.conv_in.weight for p in (a, b, c))
    assert (wa == wb).all()
    assert not (wa == wc).all()


def test_ensure_builds_once(tmp_path):
    out = ensure_tiny_model(tmp_path / "m")
    stamp = (out / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_model(out) == out
    assert (out / "model_index.json").stat().st_mtime_ns == stamp
