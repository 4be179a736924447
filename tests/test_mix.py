"""gen_core.mix: recipe parsing, embedding blends and composable guidance on the tiny model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from gen_core.engine import Engine
from gen_core.mix import (
    BLEND,
    COMPOSABLE,
    SWEEP_WEIGHTS,
    MixError,
    MixPart,
    MixRequest,
    blend_embeddings,
    format_recipe,
    generate_mix,
    normalized_weights,
    parse_recipe,
)
from gen_core.types import Cancelled, EngineConfig, GenerationRequest


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir)))


def parts(*pairs):
    return [MixPart(t, float(w)) for t, w in pairs]


# ----------------------------------------------------------------------------- parser


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("cat:0.7 | kitten:0.3", parts(("cat", 0.7), ("kitten", 0.3))),
        ("cat | kitten:2", parts(("cat", 1), ("kitten", 2))),
        ("a (red:1.2) cat | dog", parts(("a (red:1.2) cat", 1), ("dog", 1))),
        ("[cat|dog] in a hat", parts(("[cat|dog] in a hat", 1))),
        ("cat:-0.5 | dog:1.5", parts(("cat", -0.5), ("dog", 1.5))),
        ("cat::2 kitten::1", parts(("cat", 2), ("kitten", 1))),
        ("cat::2 kitten", parts(("cat", 2), ("kitten", 1))),
        ("cat:: kitten::.5", parts(("cat", 1), ("kitten", 0.5))),
        ("red car::-0.5 blue car", parts(("red car", -0.5), ("blue car", 1))),
        ("cat AND kitten :0.5", parts(("cat", 1), ("kitten", 0.5))),
        ("cat :0.25 AND (kitten) AND dog", parts(("cat", 0.25), ("(kitten)", 1), ("dog", 1))),
        ("a cat", parts(("a cat", 1))),
        ("score:9 style", parts(("score:9 style", 1))),
    ],
)
def test_parse_recipe(recipe, expected):
    assert parse_recipe(recipe) == expected


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("", "empty"),
        ("cat | | dog", "Part 2 is empty"),
        ("cat:0.5 | :2", "Part 2 is empty"),
        ("::2 cat", "Part 1 is empty"),
        ("cat::2::3", "Part 2 is empty"),
        ("cat:0.7x | dog", "`0.7x` is not a number"),
        ("cat | dog:", "`` is not a number"),
        ("cat::2.5.1 dog", "`2.5.1` is not a number"),
        ("cat AND dog :1e999", "finite"),
        ("a | b | c | d | e", "5 parts; the limit is 4"),
        ("a::1 b | c", "one syntax"),
    ],
)
def test_parse_recipe_errors(recipe, message):
    with pytest.raises(MixError, match=message.replace("|", r"\|").replace("(", r"\(")):
        parse_recipe(recipe, max_parts=4)


def test_format_recipe_round_trips():
    p = parse_recipe("cat::2 (kitten:1.1)::0.333")
    assert parse_recipe(format_recipe(p)) == p


def test_normalisation():
    assert normalized_weights([2, 1, 1]) == [0.5, 0.25, 0.25]
    assert normalized_weights([2, 1], normalize=False) == [2.0, 1.0]
    assert normalized_weights([1.5, -0.5]) == [1.5, -0.5]
    with pytest.raises(MixError, match="add up to 0"):
        normalized_weights([1, -1])


# ----------------------------------------------------------------------------- embeddings


def test_blend_of_one_prompt_is_plain_encoding(engine):
    enc = engine.encoder
    cond, uncond = blend_embeddings(enc, ["a (red:1.3) cat"], [1.0], negative="blurry")
    plain_cond, plain_uncond = enc.encode_pair("a (red:1.3) cat", "blurry")
    assert torch.equal(cond, plain_cond) and torch.equal(uncond, plain_uncond)
    # any single weight normalises to 1
    assert torch.allclose(blend_embeddings(enc, ["a cat"], [3.0])[0], enc.encode("a cat"), atol=1e-6)


def test_blend_weights_one_zero_is_first_prompt(engine):
    enc = engine.encoder
    long_second = ", ".join(["kitten"] * 50)  # two chunks: the first prompt is padded to match
    cond, _ = blend_embeddings(enc, ["a cat", long_second], [1.0, 0.0])
    expected = enc.encode("a cat", min_chunks=2)
    assert cond.shape == expected.shape == (1, 154, expected.shape[-1])
    assert torch.equal(cond, expected)


def test_blend_is_the_normalised_weighted_sum(engine):
    enc = engine.encoder
    a, b = enc.encode_many(["a cat", "a dog"])
    cond, _ = blend_embeddings(enc, ["a cat", "a dog"], [3.0, 1.0])
    assert torch.allclose(cond[0], 0.75 * a + 0.25 * b, atol=1e-5)
    raw, _ = blend_embeddings(enc, ["a cat", "a dog"], [3.0, 1.0], normalize=False)
    assert torch.allclose(raw[0], 3 * a + b, atol=1e-5)
    negative, _ = blend_embeddings(enc, ["a cat", "a dog"], [1.0, -0.5])
    assert torch.allclose(negative[0], 2 * a - b, atol=1e-5)


# ----------------------------------------------------------------------------- generation


def base(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "", "width": 64, "height": 64, "steps": 3, "seed": 11, "negative": "ugly", **kw})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("mode", [BLEND, COMPOSABLE])
def test_one_prompt_equals_plain_cfg(engine, mode):
    plain = engine.generate(base(prompt="a cat", count=2))
    [mixed] = generate_mix(engine, [MixRequest(base(count=2), parts(("a cat", 1)), mode=mode)])
    assert [g.seed for g in mixed.images] == [11, 12]
    for a, b in zip(plain.images, mixed.images, strict=True):
        assert np.abs(pixels(a.image) - pixels(b.image)).max() <= 1
    params = mixed.images[0].parameters
    assert params["prompt"] == "a cat:1" and params["Mix mode"] == mode and params["seed"] == 11


def test_modes_differ_and_weights_matter(engine):
    recipe = parts(("a red cat", 1), ("a blue dog", 1))
    blend, comp = generate_mix(
        engine, [MixRequest(base(), recipe, mode=BLEND), MixRequest(base(), recipe, mode=COMPOSABLE)]
    )
    [first] = generate_mix(engine, [MixRequest(base(), parts(("a red cat", 1), ("a blue dog", 0)), mode=COMPOSABLE)])
    only_first = engine.generate(base(prompt="a red cat"))
    a, b = pixels(blend.images[0].image), pixels(comp.images[0].image)
    assert np.abs(a - b).max() > 0
    # composable with weights 1/0 is plain CFG of the first prompt (padding aside: both 1 chunk)
    assert np.abs(pixels(first.images[0].image) - pixels(only_first.images[0].image)).max() <= 1
    assert blend.images[0].parameters["Mix weights"] == "0.5, 0.5"


def test_sweep_is_one_grid_with_the_ends_equal_to_each_prompt(engine):
    recipe = parts(("a red cat", 1), ("a blue dog", 1))
    [sweep] = generate_mix(engine, [MixRequest(base(), recipe, mode=BLEND, sweep=SWEEP_WEIGHTS)])
    [grid] = sweep.images
    assert grid.image.size == (64 * 5, 64)
    assert grid.parameters["Mix sweep"] == "0, 0.25, 0.5, 0.75, 1"
    first = engine.generate(base(prompt="a red cat")).images[0].image
    last = engine.generate(base(prompt="a blue dog")).images[0].image
    cells = [pixels(grid.image.crop((64 * i, 0, 64 * (i + 1), 64))) for i in range(5)]
    assert np.abs(cells[0] - pixels(first)).max() <= 1
    assert np.abs(cells[4] - pixels(last)).max() <= 1
    assert np.abs(cells[2] - cells[0]).max() > 0


def test_progress_and_cancel(engine):
    seen = []
    generate_mix(
        engine,
        [MixRequest(base(), parts(("a", 1), ("b", 1)), mode=COMPOSABLE)] * 2,
        progress=seen.append,
        preview_every=3,
    )
    assert [(p.step, p.total, p.request_indices) for p in seen] == [(s, 3, (i,)) for i in (0, 1) for s in (1, 2, 3)]
    assert seen[2].preview is not None and seen[2].preview.size == (8, 8)

    stop = threading.Event()

    def cancel_after_first(p):
        stop.set()

    with pytest.raises(Cancelled):
        generate_mix(engine, [MixRequest(base(), parts(("a", 1)))], progress=cancel_after_first, cancel=stop)


def test_bad_requests_fail_before_denoising(engine):
    with pytest.raises(MixError, match="sweep needs at least two"):
        generate_mix(engine, [MixRequest(base(), parts(("a", 1)), sweep=SWEEP_WEIGHTS)])
    with pytest.raises(MixError, match="Unknown mix mode"):
        generate_mix(engine, [MixRequest(base(), parts(("a", 1)), mode="average")])
    with pytest.raises(ValueError, match="Steps"):
        generate_mix(engine, [MixRequest(base(steps=0), parts(("a", 1)))])
