"""Prompt syntax (A1111 emphasis, BREAK), chunked CLIP encoding, CLIP skip and length limits."""

import copy

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from gen_core.prompts import (
    Chunk,
    PromptEncoder,
    PromptError,
    PromptTooLong,
    count_tokens,
    parse_prompt_attention,
    strip_extra_networks,
)

BOS, EOS, COMMA, CAT = 49406, 49407, 267, 2368


def cats(n: int) -> str:
    """A prompt of exactly n tokens ("cat" is one CLIP token)."""
    return " ".join(["cat"] * n)


def mixed(n: int) -> str:
    """n one-token words in a 7-word cycle, so that no two 75-token chunks are alike."""
    words = ["cat", "dog", "bird", "fish", "frog", "red", "blue"]
    return " ".join(words[i % 7] for i in range(n))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")


@pytest.fixture(scope="module")
def text_encoder(tiny_model_dir):
    return CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder").eval()


@pytest.fixture()
def encoder(tokenizer, text_encoder):
    return PromptEncoder(tokenizer, text_encoder)


def direct(text_encoder, tokens: list[int], multipliers: list[float], clip_skip: int) -> torch.Tensor:
    """Reference computation for one chunk: encoder, CLIP skip, emphasis with mean restore."""
    with torch.no_grad():
        out = text_encoder(input_ids=torch.tensor([tokens]), output_hidden_states=True)
        z = (
            out.last_hidden_state
            if clip_skip == 1
            else text_encoder.final_layer_norm(out.hidden_states[-clip_skip])
        )
        original_mean = z.mean()
        z = z * torch.tensor(multipliers).reshape(1, -1, 1)
        return z * (original_mean / z.mean())


# ---------------------------------------------------------------------------------------------
# parse_prompt_attention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The examples documented in AUTOMATIC1111's prompt_parser.parse_prompt_attention.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_a1111_documented_examples(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("", 1.0)]),
        ("(a)", [("a", 1.1)]),
        ("((a))", [("a", 1.1 * 1.1)]),
        ("[a]", [("a", 1 / 1.1)]),
        ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
        ("(a:1.3)", [("a", 1.3)]),
        ("(a: 1.5 )", [("a", 1.5)]),
        ("(a:.5)", [("a", 0.5)]),
        ("(a:-1)", [("a", -1.0)]),
        ("((a:1.5))", [("a", 1.5 * 1.1)]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
        ("([a:1.5])", [("a:1.5", 1.0)]),  # explicit weights only close round brackets
        ("(a:x)", [("a:x", 1.1)]),  # not a number: the colon is text
        ("(a:.)", [("a:.", 1.1)]),
        ("a:b", [("a:b", 1.0)]),
        ("a) b]", [("a) b]", 1.0)]),  # closing brackets with nothing open are text
        ("[a (b] c)", [("a ", 1 / 1.1), ("b", 1.0), (" c", 1.1)]),  # round and square are tracked separately
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
        ("a ((b", [("a ", 1.0), ("b", 1.1 * 1.1)]),
        ("\\(a\\) \\[b\\] \\\\", [("(a) [b] \\", 1.0)]),
        ("\\((a)", [("(", 1.0), ("a", 1.1)]),
        ("lone \\ backslash", [("lone \\ backslash", 1.0)]),
        ("a (b:1.0) c", [("a b c", 1.0)]),  # equal weights merge
        ("(a)(b) (c:1.1)", [("ab", 1.1), (" ", 1.0), ("c", 1.1)]),
    ],
)
def test_parse_rules(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("a\nBREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("BREAK", [("BREAK", -1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]),
        ("breakfast BREAKING break", [("breakfast BREAKING break", 1.0)]),
    ],
)
def test_break(text, expected):
    assert parse_prompt_attention(text) == expected


# ---------------------------------------------------------------------------------------------
# strip_extra_networks
# ---------------------------------------------------------------------------------------------


def test_strip_extra_networks():
    text, nets = strip_extra_networks(
        "<lora:detail> a cat, <hypernet:anime_v2:0.8>, (sitting:1.2) <hypernet:x:-0.5>"
    )
    assert text == "a cat, , (sitting:1.2)"
    assert [(n.kind, n.name, n.weight) for n in nets] == [("lora", "detail", 1.0), ("hypernet", "anime_v2", 0.8), ("hypernet", "x", -0.5)]
    _, (tag,) = strip_extra_networks("<lora:x:0.5: te = 0.25 :1>")
    assert tag.weights == (0.5, 1.0) and tag.named == (("te", 0.25),)


def test_strip_extra_networks_leaves_plain_prompts_alone():
    assert strip_extra_networks("a  <b> (c:1.2) <not a tag>") == ("a  <b> (c:1.2) <not a tag>", [])


def test_strip_extra_networks_bad_weight():
    with pytest.raises(PromptError, match="weight must be a number"):
        strip_extra_networks("a <lora:detail:lots>")
    with pytest.raises(PromptError, match="finite"):
        strip_extra_networks("a <lora:detail:te=inf>")


# ---------------------------------------------------------------------------------------------
# Token counting and chunking
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("a photo of a cat", 5),
        ("(a photo:1.3) of [a] cat", 5),
        ("masterpiece, best quality", 4),
        ("a BREAK b", 2),
        ("", 0),
        (cats(260), 260),
    ],
)
def test_count_tokens(tokenizer, text, n):
    assert count_tokens(text, tokenizer) == n


@pytest.mark.parametrize(("n", "chunks"), [(0, 1), (1, 1), (75, 1), (76, 2), (150, 2), (151, 3), (225, 3)])
def test_chunk_counts_and_shapes(encoder, n, chunks):
    tokenized = encoder.tokenize(cats(n))
    assert len(tokenized) == chunks
    for chunk in tokenized:
        assert isinstance(chunk, Chunk)
        assert len(chunk.tokens) == 77 and len(chunk.multipliers) == 77
        assert chunk.tokens[0] == BOS
    flat = [t for c in tokenized for t in c.tokens[1:76] if t == CAT]
    assert len(flat) == n
    assert encoder.encode(cats(n)).shape == (1, 77 * chunks, 32)


def test_chunk_layout(encoder):
    (chunk,) = encoder.tokenize("a photo of (a cat:1.5)")
    assert chunk.tokens == [BOS, 320, 1125, 539, 320, 2368, EOS] + [EOS] * 70
    assert chunk.multipliers == [1.0, 1.0, 1.0, 1.0, 1.5, 1.5, 1.0] + [1.0] * 70
    first, second = encoder.tokenize(cats(80))
    assert first.tokens == [BOS] + [CAT] * 75 + [EOS]
    assert second.tokens == [BOS] + [CAT] * 5 + [EOS] * 71


def test_break_starts_new_chunk(encoder):
    first, second = encoder.tokenize("a photo BREAK of a cat")
    assert first.tokens[:4] == [BOS, 320, 1125, EOS]
    assert second.tokens[:5] == [BOS, 539, 320, 2368, EOS]
    assert encoder.encode("a photo BREAK of a cat").shape == (1, 154, 32)
    # A BREAK right after a full chunk does not add an empty chunk; a trailing BREAK adds nothing.
    assert len(encoder.tokenize(cats(75) + " BREAK cat")) == 2
    assert len(encoder.tokenize("cat BREAK")) == 1
    # A1111: a leading BREAK ends the (empty) first chunk.
    assert len(encoder.tokenize("BREAK cat")) == 2


def test_comma_backtrack_moves_the_last_tag(encoder):
    tag = "dog bird fish frog red"  # 5 tokens
    first, second = encoder.tokenize(cats(72) + ", " + tag)
    assert first.tokens == [BOS] + [CAT] * 72 + [COMMA, EOS, EOS, EOS]
    assert second.tokens[:7] == [BOS, 1929, 3329, 2759, 11438, 736, EOS]


def test_comma_backtrack_only_looks_20_tokens_back(encoder):
    first, second = encoder.tokenize(cats(50) + ", " + " ".join(["dog"] * 30))
    assert first.tokens == [BOS] + [CAT] * 50 + [COMMA] + [1929] * 24 + [EOS]
    assert second.tokens[:8] == [BOS] + [1929] * 6 + [EOS]
    # Exactly 20 back still moves (A1111's <= 20).
    first, _ = encoder.tokenize(cats(55) + ", " + " ".join(["dog"] * 21))
    assert first.tokens[55:58] == [CAT, COMMA, EOS]


def test_comma_backtrack_can_be_disabled(tokenizer, text_encoder):
    enc = PromptEncoder(tokenizer, text_encoder, comma_backtrack=0)
    first, _ = enc.tokenize(cats(72) + ", dog bird fish frog red")
    assert first.tokens == [BOS] + [CAT] * 72 + [COMMA, 1929, 3329, EOS]


def test_comma_at_chunk_boundary_needs_no_backtrack(encoder):
    first, second = encoder.tokenize(cats(75) + ", dog")
    assert first.tokens == [BOS] + [CAT] * 75 + [EOS]
    assert second.tokens[:4] == [BOS, COMMA, 1929, EOS]


def test_backtrack_padding_never_rejects_a_prompt_that_fits(encoder):
    # 225 tokens whose commas would push tags into a 4th chunk: filled completely instead.
    text = cats(72) + ", dog bird fish frog red, " + cats(146)
    assert count_tokens(text, encoder.tokenizer) == 225
    chunks = encoder.tokenize(text)
    assert len(chunks) == 3
    assert all(EOS not in c.tokens[1:76] for c in chunks)


# ---------------------------------------------------------------------------------------------
# Length limit
# ---------------------------------------------------------------------------------------------


def test_too_long_prompt_is_rejected_with_count_and_limit(encoder):
    with pytest.raises(PromptTooLong) as info:
        encoder.encode(cats(260))
    assert str(info.value) == "Prompt is 260 tokens; the limit is 225 (3 chunks of 75). Shorten it."
    assert info.value.token_count == 260 and info.value.limit == 225
    assert isinstance(info.value, PromptError) and isinstance(info.value, ValueError)
    with pytest.raises(PromptTooLong, match="226 tokens"):
        encoder.tokenize(cats(226))


def test_limit_is_configurable(tokenizer, text_encoder):
    one = PromptEncoder(tokenizer, text_encoder, max_chunks=1)
    with pytest.raises(PromptTooLong, match=r"^Prompt is 76 tokens; the limit is 75 \(1 chunk of 75\)"):
        one.tokenize(cats(76))
    unlimited = PromptEncoder(tokenizer, text_encoder, max_chunks=None)
    assert unlimited.encode(cats(300)).shape == (1, 77 * 4, 32)


def test_too_many_breaks(encoder):
    with pytest.raises(PromptTooLong, match="4 tokens but its BREAKs split it into 4 chunks") as info:
        encoder.tokenize("a BREAK b BREAK c BREAK d")
    assert info.value.token_count == 4 and info.value.limit == 225


def test_negative_prompt_is_limited_too(encoder):
    with pytest.raises(PromptTooLong):
        encoder.encode_pair("cat", cats(230))


# ---------------------------------------------------------------------------------------------
# Encoding: CLIP skip, emphasis
# ---------------------------------------------------------------------------------------------


def test_clip_skip(tokenizer, text_encoder):
    enc = PromptEncoder(tokenizer, text_encoder)  # default clip_skip=2
    ids = torch.tensor([enc.tokenize("a photo of a cat")[0].tokens])
    with torch.no_grad():
        out = text_encoder(input_ids=ids, output_hidden_states=True)
        skip2 = text_encoder.final_layer_norm(out.hidden_states[-2])
        skip3 = text_encoder.final_layer_norm(out.hidden_states[-3])
    torch.testing.assert_close(enc.encode("a photo of a cat"), skip2)
    torch.testing.assert_close(enc.encode("a photo of a cat", clip_skip=1), out.last_hidden_state)
    torch.testing.assert_close(enc.encode("a photo of a cat", clip_skip=3), skip3)
    assert not torch.allclose(skip2, out.last_hidden_state)
    for bad in (0, 4, -1):
        with pytest.raises(ValueError, match="clip_skip"):
            enc.encode("cat", clip_skip=bad)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_emphasis_matches_direct_computation(encoder, text_encoder, clip_skip):
    text = "a (photo:1.5) of [[a]] ((cat)), (red:0.5)"
    (chunk,) = encoder.tokenize(text)
    assert sorted(set(chunk.multipliers)) == pytest.approx(sorted({1.0, 1.5, 1 / 1.21, 1.21, 0.5}))
    expected = direct(text_encoder, chunk.tokens, chunk.multipliers, clip_skip)
    torch.testing.assert_close(encoder.encode(text, clip_skip=clip_skip), expected, rtol=1e-5, atol=1e-5)
    # The mean is restored, the values are not those of the unweighted prompt.
    plain = direct(text_encoder, chunk.tokens, [1.0] * 77, clip_skip)
    assert torch.allclose(expected.mean(), plain.mean(), atol=1e-5)
    assert not torch.allclose(expected, plain)


def test_emphasis_is_applied_per_chunk(encoder, text_encoder):
    text = cats(75) + " (dog:1.4) bird"
    first, second = encoder.tokenize(text)
    z = encoder.encode(text)
    torch.testing.assert_close(z[:, :77], direct(text_encoder, first.tokens, first.multipliers, 2))
    torch.testing.assert_close(z[:, 77:], direct(text_encoder, second.tokens, second.multipliers, 2))


def test_unweighted_prompt_is_plain_encoder_output(encoder, text_encoder):
    (chunk,) = encoder.tokenize("a photo of a cat")
    with torch.no_grad():
        out = text_encoder(input_ids=torch.tensor([chunk.tokens]), output_hidden_states=True)
    assert torch.equal(encoder.encode("a photo of a cat", clip_skip=1), out.last_hidden_state)


# ---------------------------------------------------------------------------------------------
# Batching and padding
# ---------------------------------------------------------------------------------------------


def test_encode_pair_pads_to_same_length(encoder):
    cond, uncond = encoder.encode_pair(cats(150), "")
    assert cond.shape == uncond.shape == (1, 154, 32)
    empty = encoder.encode("")
    torch.testing.assert_close(uncond[:, :77], empty)
    torch.testing.assert_close(uncond[:, 77:], empty)
    torch.testing.assert_close(cond, encoder.encode(cats(150)))

    cond, uncond = encoder.encode_pair("cat", "ugly, " + cats(200))
    assert cond.shape == uncond.shape == (1, 231, 32)
    torch.testing.assert_close(cond[:, :77], encoder.encode("cat"))
    torch.testing.assert_close(cond[:, 154:], empty)


def test_encode_many_and_min_chunks(encoder):
    texts = ["cat", cats(100), "(dog:1.3), " + cats(160)]
    z = encoder.encode_many(texts)
    assert z.shape == (3, 231, 32)
    for i, text in enumerate(texts):
        torch.testing.assert_close(z[i : i + 1], encoder.encode(text, min_chunks=3), rtol=1e-5, atol=1e-5)
    assert encoder.encode("cat", min_chunks=2).shape == (1, 154, 32)
    with pytest.raises(ValueError):
        encoder.encode_many([])


def test_all_chunks_go_through_the_encoder_in_one_pass(tokenizer, text_encoder):
    enc = PromptEncoder(tokenizer, text_encoder)
    batches = []
    handle = text_encoder.register_forward_hook(
        lambda mod, args, kwargs, out: batches.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        assert count_tokens(mixed(225), tokenizer) == 225
        enc.encode_many([mixed(225), cats(75)])  # no empty chunk involved: one extra pass to cache it
        assert batches == [(4, 77), (1, 77)]
        batches.clear()
        enc.encode_pair(mixed(225), "")  # empty chunks now come from the cache
        assert batches == [(3, 77)]
        batches.clear()
        enc.encode_pair("(cat:1.2) dog", "(cat:1.2) dog")  # identical chunks are encoded once
        assert batches == [(1, 77)]
        batches.clear()
        enc.encode("")
        assert batches == []
        enc.encode("", clip_skip=1)  # cached per clip skip
        assert batches == [(1, 77)]
        enc.clear_cache()
        enc.encode("")
        assert len(batches) == 2
    finally:
        handle.remove()


def test_output_follows_text_encoder_dtype(tokenizer, text_encoder):
    te64 = copy.deepcopy(text_encoder).to(torch.float64)
    enc = PromptEncoder(tokenizer, te64)
    cond, uncond = enc.encode_pair("(cat:1.2)", "")
    assert cond.dtype == uncond.dtype == torch.float64
    assert not cond.requires_grad


def test_module_doctests():
    import doctest

    import gen_core.prompts

    result = doctest.testmod(gen_core.prompts)
    assert result.attempted >= 8 and result.failed == 0


def test_count_tokens_with_a_limit_skips_tokenizing_prompts_that_cannot_fit(tokenizer):
    """3,000 bracketed words are 3,000 runs, each at least a token: refused without tokenizing each."""
    text = "(a" * 3000
    assert count_tokens(text, tokenizer, limit=225) == 3000 == count_tokens(text, tokenizer)
    assert count_tokens("a (b) c", tokenizer, limit=2) == 3
    assert count_tokens("(a) BREAK b", tokenizer, limit=225) == count_tokens("(a) BREAK b", tokenizer) == 2


def test_deep_brackets_parse_the_same_way_with_bounded_work():
    runs = parse_prompt_attention("[a" * 3000)
    assert runs[0] == ("a", 1 / 1.1) and runs[1][1] == pytest.approx(1 / 1.1**2)
    assert runs[-1][1] == 0.0  # below 1e-100: nothing left of the word
    assert parse_prompt_attention("((a:1.5) b)") == [("a", 1.5 * 1.1), (" b", 1.1)]
