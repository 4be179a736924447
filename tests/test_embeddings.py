"""Textual-inversion embeddings on the tiny SD 1.x and SDXL models: A1111 files (.pt and .safetensors,
built here) read without running pickles, a prompt that names one encodes its vectors in place of the
name (an embedding holding a word's own token vectors encodes exactly like the word, pooled output
included), token counts include the vectors, an embedding is never split across chunks, the encoder
is exactly as before afterwards, and names that are vocabulary words or files for another model are
refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from safetensors.torch import save

from gen_core import embeddings as E
from gen_core.engine import Engine
from gen_core.prompts import CHUNK_TOKENS, count_tokens
from gen_core.types import EngineConfig, GenerationRequest
from tests.test_hypernetwork import _Evil


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_sdxl_dir)))


def encoders(engine: Engine) -> list:
    return [e for e in (engine.txt2img.text_encoder, getattr(engine.txt2img, "text_encoder_2", None)) if e is not None]


def word_vectors(engine: Engine, word: str) -> list[torch.Tensor]:
    """The token embedding rows of ``word`` in each text encoder (a "learned" embedding equal to the word)."""
    ids = engine.tokenizer(word, add_special_tokens=False)["input_ids"]
    return [e.get_input_embeddings().weight[ids].detach().clone() for e in encoders(engine)]


def random_vectors(engine: Engine, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, w, generator=g) * 0.5 for w in engine.text_widths]


def a1111_pt(vectors: torch.Tensor, name: str = "style", extra: dict | None = None) -> bytes:
    buf = io.BytesIO()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name, "step": 500, **(extra or {})}, buf)
    return buf.getvalue()


def native(vectors: list[torch.Tensor]) -> bytes:
    return save({"emb_params": vectors[0]} if len(vectors) == 1 else {"clip_l": vectors[0], "clip_g": vectors[1]})


def stored(engine: Engine, tmp_path, name: str, vectors: list[torch.Tensor]) -> E.EmbeddingUse:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(E.read(native(vectors), "x.safetensors").to_bytes())
    return E.EmbeddingUse(name, str(path))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_embedding_of_a_words_vectors_encodes_like_the_word(request, tmp_path, family):
    engine = request.getfixturevalue("engine" if family == "sd1" else "sdxl")
    use = stored(engine, tmp_path, "zq-cat7", word_vectors(engine, "cat"))
    req = GenerationRequest("a (zq-cat7:1.2) on a mat", embeddings=(use,))
    vectors = engine.vectors(req)
    cond, _ = engine.encoder.encode_pair(req.prompt, "", embeddings=vectors)
    ref, _ = engine.encoder.encode_pair("a (cat:1.2) on a mat", "")
    torch.testing.assert_close(cond, ref, atol=1e-5, rtol=1e-4)
    if engine.is_sdxl:
        torch.testing.assert_close(engine.encoder.pooled_many([req.prompt], vectors), engine.encoder.pooled_many(["a (cat:1.2) on a mat"]))
    # without the embedding the name is plain text, and encodes differently
    plain, _ = engine.encoder.encode_pair(req.prompt, "")
    assert (plain - ref).abs().max() > 1e-3
    # part of a longer word is not the name
    assert torch.equal(engine.encoder.encode("a zq-cat7s", embeddings=vectors), engine.encoder.encode("a zq-cat7s"))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_embedding_changes_the_image_and_leaves_the_model_as_before(request, tmp_path, family):
    engine = request.getfixturevalue("engine" if family == "sd1" else "sdxl")
    use = stored(engine, tmp_path, "xq-style", random_vectors(engine, 4, seed=1))
    size = engine.geometry.native // 2

    def render(*uses, prompt="a cat xq-style, sitting"):
        req = GenerationRequest(prompt, "xq-style", width=size, height=size, steps=3, seed=3, embeddings=uses)
        return np.asarray(engine.generate(req).images[0].image, dtype=np.int16)

    plain = render()
    styled = render(use)
    assert np.abs(styled - plain).mean() > 1
    np.testing.assert_array_equal(render(), plain)
    assert list(engine.text_encoder.get_input_embeddings()._forward_hooks) == []  # no hook left behind
    # a batch where only one request names embeddings gives each its own image
    with_and_without = engine.generate_batch(
        [GenerationRequest("a cat xq-style, sitting", "xq-style", width=size, height=size, steps=3, seed=3, embeddings=e) for e in ((use,), ())]
    )
    for result, ref in zip(with_and_without, (styled, plain), strict=True):
        assert np.abs(np.asarray(result.images[0].image, np.int16) - ref).max() <= 2


def test_token_counts_include_vectors_and_embeddings_stay_in_one_chunk(engine):
    tok = engine.tokenizer
    assert count_tokens("a xq-style cat", tok) == count_tokens("a xq - style cat", tok)  # the name's BPE tokens
    assert count_tokens("a xq-style cat", tok, embeddings={"xq-style": 10}) == 12
    assert engine.count_tokens("(xq-style:1.1), x", embeddings={"xq-style": 10}) == 12
    vectors = {"xq-style": random_vectors(engine, 10, seed=2)[0]}
    chunks = engine.encoder.tokenize(", ".join(["cat"] * 35) + " xq-style", vectors)  # 69 tokens, then 10 vectors
    assert len(chunks) == 2
    assert all(t < 0 for t in chunks[1].tokens[1:11]) and not any(t < 0 for t in chunks[0].tokens)


def test_files_in_each_format_and_refusals(engine, sdxl, tmp_path):
    sd1 = random_vectors(engine, 2, seed=3)
    from_pt = E.read(a1111_pt(sd1[0]), "style.pt")
    assert from_pt.count == 2 and from_pt.widths == engine.text_widths and from_pt.meta["step"] == "500"
    assert torch.equal(E.read(native(sd1), "s.safetensors").vectors[0], sd1[0])
    again = E.read(from_pt.to_bytes(), "s.safetensors")
    assert torch.equal(again.vectors[0], sd1[0]) and again.meta["name"] == "style"
    xl = E.read(native(random_vectors(sdxl, 3, seed=4)), "xl.safetensors")
    assert xl.widths == sdxl.text_widths and len(xl.vectors) == 2
    xl.check_fits(sdxl.text_widths)

    with pytest.raises(E.EmbeddingError, match="made for a 32-wide model .* is a 32 \\+ 64-wide model"):
        from_pt.check_fits(sdxl.text_widths)
    with pytest.raises(E.EmbeddingError, match="made for an SDXL model .* is an SD 1.x model"):
        E.TextualInversion((torch.zeros(1, 768), torch.zeros(1, 1280))).check_fits((768,))
    marker = tmp_path / "pwned"
    with pytest.raises(E.EmbeddingError, match="pickled code"):
        E.read(a1111_pt(sd1[0], extra={"payload": _Evil(str(marker))}), "evil.pt")
    assert not marker.exists()
    with pytest.raises(E.EmbeddingError, match="not a PyTorch zip"):
        E.read(b"\x80\x04junk", "old.pt")
    with pytest.raises(E.EmbeddingError, match="damaged"):
        E.read(native(sd1)[:-8], "cut.safetensors")
    with pytest.raises(E.EmbeddingError, match="not a textual-inversion embedding .*lora_unet"):
        E.read(save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}), "lora.safetensors")
    with pytest.raises(E.EmbeddingError, match="one to 75 vectors"):
        E.read(native([torch.zeros(CHUNK_TOKENS + 1, 32)]), "long.safetensors")
    with pytest.raises(E.EmbeddingError, match="infinite"):
        E.read(native([torch.full((1, 32), float("nan"))]), "nan.safetensors")
    with pytest.raises(E.EmbeddingError, match=".safetensors or an AUTOMATIC1111 .pt"):
        E.read(b"", "style.bin")


def test_names_that_are_vocabulary_words_are_refused(engine):
    for word in ("cat", "Style", "red"):
        with pytest.raises(E.EmbeddingError, match="ordinary word"):
            E.check_name(word, engine.tokenizer)
    for name in ("xq-style", "easynegative2", "myStyle_v2"):
        E.check_name(name, engine.tokenizer)
