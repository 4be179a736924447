"""Typed job parameters: JSON round trips for every kind, strict decoding, batch groups, price inputs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from storage import JobKind
from storage.policy import DEFAULT_MULTIPLIERS
from worker.jobs import (
    PARAMS_TYPES,
    PARAMS_VERSION,
    EditParams,
    EditRemixParams,
    HypernetTrainParams,
    HypernetUse,
    ImagineMode,
    ImagineParams,
    InpaintParams,
    MixParams,
    OutpaintParams,
    decode,
    encode,
)

BASE = dict(prompt="masterpiece, a cat", user_prompt="a cat", negative="lowres", width=512, height=768, steps=28,
            cfg=7.0, sampler="Euler a", seed=5, count=2, clip_skip=2)  # fmt: skip
EXAMPLES = [
    ImagineParams(**BASE),
    ImagineParams(**BASE, mode=ImagineMode.UPSCALE, init_image="ab/x.png", strength=0.35, source_job=1, source_index=0,
                  hypernets=(HypernetUse("style", "/m/s.safetensors", 0.8),)),
    ImagineParams(**BASE, mode=ImagineMode.IMG2IMG, init_image="ab/u.png", strength=0.7, noise=0.2, fit="pad"),
    EditParams(**BASE, init_image="ab/e.png", eta=0.7, preset="fast", embed_steps=50, tune_steps=100, work_steps=225),
    EditRemixParams(**BASE, source_job=3, eta=0.9),
    OutpaintParams(**BASE, init_image="ab/o.png", box=(0, 0, 256, 768), direction="left", pixels=256, strength=1.0,
                   mask_blur=16),
    InpaintParams(**BASE, init_image="ab/i.png", mask="ab/m.png", strength=0.75, fill="noise", mask_blur=8),
    MixParams(**BASE, parts=(("cat", 0.7), ("dog", 0.3)), mix_mode="composable", sweep=(0.0, 0.5, 1.0), passes=9),
    HypernetTrainParams(**BASE, train_images=("ab/t.png",), captions=("cat",), train_steps=8, train_area=65536, lr=1e-4,
                        batch_size=1, shallow_penalty=0.001, module_name="cats",
                        module_path="/m/t.safetensors", work_steps=12),
]  # fmt: skip


def test_one_params_type_and_one_multiplier_per_kind():
    assert set(PARAMS_TYPES) == set(JobKind) == set(DEFAULT_MULTIPLIERS)
    assert {type(p) for p in EXAMPLES} == set(PARAMS_TYPES.values())


@pytest.mark.parametrize("params", EXAMPLES, ids=lambda p: p.kind)
def test_json_round_trip(params):
    stored = json.loads(json.dumps(encode(params)))  # what the jobs table holds
    assert decode(params.kind, stored, PARAMS_VERSION) == params


def test_decoding_is_strict():
    stored = encode(EXAMPLES[0])
    with pytest.raises(ValueError, match="no field"):
        decode(JobKind.IMAGINE, {**stored, "modules": []})
    with pytest.raises(ValueError, match="version"):
        decode(JobKind.IMAGINE, stored, PARAMS_VERSION + 1)
    with pytest.raises(ValueError):
        decode("reroll", stored)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXAMPLES[0].seed = 1  # type: ignore[misc]


def test_batch_groups():
    txt = EXAMPLES[0]
    assert txt.batch_group() == dataclasses.replace(txt, seed=9, prompt="a dog", count=1).batch_group()
    assert txt.batch_group() != dataclasses.replace(txt, steps=20).batch_group()
    styled = dataclasses.replace(txt, hypernets=(HypernetUse("style", "/m/s.safetensors", 0.8),))
    assert styled.batch_group() != txt.batch_group()  # hypernetworks are attached per batch
    img = dataclasses.replace(txt, init_image="ab/x.png", strength=0.6, mode=ImagineMode.VARIATION)
    assert img.batch_group() != txt.batch_group()
    assert img.batch_group() != dataclasses.replace(img, strength=0.35).batch_group()
    assert img.batch_group() == dataclasses.replace(img, noise=0.3, init_image="cd/y.png").batch_group()  # noise is per image
    edit = EXAMPLES[3]
    assert edit.batch_group() != edit.batch_group()  # an optimisation always runs alone
    remix = EXAMPLES[4]
    assert remix.batch_group() == dataclasses.replace(remix, eta=0.5, seed=1).batch_group()
    assert remix.batch_group() != dataclasses.replace(remix, source_job=4).batch_group()
    assert len({p.batch_group().split(":")[0] for p in EXAMPLES}) == len(JobKind)


def test_price_inputs():
    imagine, upscale, upload, edit, remix, outpaint, inpaint, mix, train = EXAMPLES
    assert (imagine.optimisation_steps, imagine.unet_passes, imagine.denoised_strength) == (0, 2, None)
    assert (imagine.denoised_steps, upload.denoised_strength, upload.denoised_steps) == (28, 0.7, 19)  # int(19.6)
    assert upscale.denoised_strength == 0.35 and outpaint.denoised_strength == 1.0 and inpaint.denoised_strength == 0.75
    assert edit.optimisation_steps == 225 and remix.optimisation_steps == 0 and train.optimisation_steps == 12
    assert mix.unet_passes == 9


def test_rows_stored_before_img2img_uploads_read_the_same():
    """`noise` and `fit` came with defaults, so rows written before them decode unchanged: no migration."""
    stored = encode(EXAMPLES[1])
    del stored["noise"], stored["fit"]
    assert decode(JobKind.IMAGINE, stored, PARAMS_VERSION) == EXAMPLES[1]
