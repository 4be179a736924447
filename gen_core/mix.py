"""Prompt mixing: several weighted prompts as one image, by embedding blend or composable guidance.

Recipes (:func:`parse_recipe`), one syntax per recipe:

* ``cat:0.7 | kitten:0.3`` — parts separated by ``|``, an optional trailing ``:weight`` each;
* ``cat::2 kitten::1`` — Midjourney: a ``::weight`` applies to the text before it;
* ``cat AND kitten :0.5`` — AUTOMATIC1111 composable syntax: parts separated by ``AND`` (upper
  case), an optional trailing ``:weight`` each.

A missing weight is 1.  Separators inside brackets (``[a|b]``, ``(x AND y:1.2)``) do not split.
Every part is a full prompt (emphasis, ``BREAK``, chunks, clip skip).  Weights may be negative: a
negative part pushes the image *away* from that prompt (in a blend, a normalised ``cat:1 | dog:-0.3``
is ``1.43·cat − 0.43·dog``, an extrapolation away from dog).

Two modes, which give different images:

* **blend** (NovelAI-style): every part is encoded, padded to the same number of 77-token chunks,
  and the encodings are averaged with the weights into one conditioning — a vector no single
  prompt produces.  Then ordinary classifier-free guidance.
* **composable** (composable diffusion, Liu et al. 2022, as A1111's ``AND``): one UNet evaluation
  per part, combined in the guidance step as ``uncond + Σ wᵢ·cfg·(condᵢ − uncond)``.  Costs one
  more UNet evaluation per part and step.

Weights are normalised to sum to 1 by default (``normalize=False`` keeps them as written: in
composable mode unnormalised ``cat AND dog`` guides with ``cfg`` towards each, as A1111 does).

:func:`generate_mix` runs mix requests with the engine's shared components, under its lock, with
the same seed (image ``i`` uses ``seed + i``, CPU generators), progress, preview and cancel
semantics as :meth:`gen_core.engine.Engine.generate_batch`.  A request with ``sweep`` weights
renders the same seed once per weight ``t`` (first part ``1 − t``, second part ``t``, the others as
written) and returns the renders as one grid image, left to right.
"""

from __future__ import annotations

import logging
import math
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from gen_core.preview import side_by_side
from gen_core.samplers import make_scheduler
from gen_core.types import Cancelled, GeneratedImage, GenerationRequest, GenerationResult, is_cancelled

log = logging.getLogger(__name__)

BLEND, COMPOSABLE = "blend", "composable"
MODES = (BLEND, COMPOSABLE)
DEFAULT_MAX_PARTS = 4
SWEEP_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_AND = re.compile(r"\bAND\b")
# A trailing ":weight" of a "|" or AND part; the weight token runs to the end of the part.
_TRAILING_WEIGHT = re.compile(r"^(?P<text>.*?)\s*:\s*(?P<weight>[^\s:()\[\]]*)\s*$", re.S)
# The weight that opens the segment after a Midjourney "::".
_LEADING_WEIGHT = re.compile(r"^\s*(?P<weight>[+\-.\d][^\s]*)?(?P<rest>.*)$", re.S)


class MixError(ValueError):
    """A recipe that cannot be used as written; the message is meant for the user."""


@dataclass(frozen=True)
class MixPart:
    text: str
    weight: float = 1.0


@dataclass
class MixRequest:
    """One mix job.  ``base`` carries everything but the prompt (its ``prompt`` is ignored; the
    metadata shows the recipe); ``sweep``, when not empty, replaces ``base.count`` (see module doc)."""

    base: GenerationRequest
    parts: list[MixPart]
    mode: str = BLEND
    normalize: bool = True
    sweep: tuple[float, ...] = ()


# ----------------------------------------------------------------------------- recipes


def _weight(token: str, part: int) -> float:
    if not re.fullmatch(_NUMBER, token):
        raise MixError(f"Part {part}: `{token}` is not a number. Write weights like `0.7`, `2` or `-0.5`.")
    value = float(token)
    if not math.isfinite(value):
        raise MixError(f"Part {part}: the weight must be a finite number.")
    return value


def _split_top_level(text: str, separator: re.Pattern[str]) -> list[str]:
    """``text`` split at ``separator`` matches outside ``()``/``[]``."""
    depth, pieces, start, pos = 0, [], 0, 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth = max(0, depth - 1)
        elif depth == 0 and (match := separator.match(text, pos)):
            pieces.append(text[start:pos])
            start = pos = match.end()
            continue
        pos += 1
    pieces.append(text[start:])
    return pieces


def _parts_with_trailing_weights(pieces: list[str]) -> list[MixPart]:
    parts = []
    for n, piece in enumerate(pieces, 1):
        match = _TRAILING_WEIGHT.match(piece)
        text, weight = piece.strip(), 1.0
        if match and not piece.rstrip().endswith(")"):
            text, weight = match["text"].strip(), _weight(match["weight"], n)
        if not text:
            raise MixError(f"Part {n} is empty. Every part needs a prompt, e.g. `cat:0.7 | kitten:0.3`.")
        parts.append(MixPart(text, weight))
    return parts


def _midjourney_parts(text: str) -> list[MixPart]:
    segments = _split_top_level(text, re.compile(r"::"))
    parts: list[MixPart] = []
    pending = segments[0].strip()
    for n, segment in enumerate(segments[1:], 1):
        match = _LEADING_WEIGHT.match(segment)
        assert match is not None  # the pattern matches any text
        if not pending:
            raise MixError(f"Part {n} is empty: `::` needs a prompt before it, e.g. `cat::2 kitten::1`.")
        weight = _weight(match["weight"], n) if match["weight"] else 1.0
        parts.append(MixPart(pending, weight))
        pending = match["rest"].strip()
    if pending:
        parts.append(MixPart(pending, 1.0))
    return parts


def parse_recipe(text: str, max_parts: int = DEFAULT_MAX_PARTS) -> list[MixPart]:
    """Parse a mix recipe (see the module doc) into parts; :class:`MixError` when malformed."""
    text = (text or "").strip()
    if not text:
        raise MixError("The recipe is empty. Write prompts and weights, e.g. `cat:0.7 | kitten:0.3`.")
    syntaxes = [
        name
        for name, pattern in (("::", re.compile(r"::")), ("|", re.compile(r"\|")), ("AND", _AND))
        if len(_split_top_level(text, pattern)) > 1
    ]
    if len(syntaxes) > 1:
        raise MixError(
            f"Use one syntax per recipe (found {' and '.join(f'`{s}`' for s in syntaxes)}): "
            "`cat:0.7 | kitten:0.3`, `cat::2 kitten::1` or `cat AND kitten :0.5`."
        )
    if syntaxes == ["::"]:
        parts = _midjourney_parts(text)
    else:
        separator = _AND if syntaxes == ["AND"] else re.compile(r"\|")
        parts = _parts_with_trailing_weights(_split_top_level(text, separator))
    if len(parts) > max_parts:
        raise MixError(f"That recipe has {len(parts)} parts; the limit is {max_parts}. Mix fewer prompts.")
    return parts


def parts_from_pairs(pairs: Sequence[Sequence]) -> list[MixPart]:
    """Parts from stored ``[text, weight]`` pairs (a job's parameters)."""
    return [MixPart(str(text), float(weight)) for text, weight in pairs]


def format_weight(weight: float) -> str:
    return f"{weight:.3f}".rstrip("0").rstrip(".") or "0"


def format_recipe(parts: Sequence[MixPart]) -> str:
    """The recipe in the ``|`` syntax, which :func:`parse_recipe` reads back to the same parts."""
    return " | ".join(f"{p.text}:{format_weight(p.weight)}" for p in parts)


def normalized_weights(weights: Sequence[float], normalize: bool = True) -> list[float]:
    """``weights`` scaled to sum to 1 (or as given); :class:`MixError` when they sum to zero."""
    if not normalize:
        return [float(w) for w in weights]
    total = sum(weights)
    if abs(total) < 1e-6:
        raise MixError("The weights add up to 0, so they cannot be normalised. Change a weight or turn normalising off.")
    return [w / total for w in weights]


def sweep_weights(parts: Sequence[MixPart], t: float) -> list[float]:
    """The weights of a sweep position: first part ``1 - t``, second ``t``, the rest unchanged."""
    if len(parts) < 2:
        raise MixError("A sweep needs at least two prompts in the recipe.")
    return [1.0 - t, t, *(p.weight for p in parts[2:])]


# ----------------------------------------------------------------------------- conditioning


def blend_embeddings(
    encoder,
    prompts: Sequence[str],
    weights: Sequence[float],
    negative: str = "",
    clip_skip: int | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond, uncond)``, each ``[1, 77·n, dim]``: the weighted sum of the prompts' encodings
    (all padded with empty chunks to the longest of them and the negative) and the negative's."""
    if len(prompts) != len(weights) or not prompts:
        raise MixError("Give one weight per prompt (at least one prompt).")
    embeds = encoder.encode_many([*prompts, negative], clip_skip=clip_skip)
    w = torch.tensor(normalized_weights(weights, normalize), dtype=torch.float32, device=embeds.device)
    return _combine(embeds[:-1], w[None]), embeds[-1:]


def _combine(conds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # [K, L, D] encodings and [B, K] weights -> [B, L, D] blends (computed in fp32).
    mixed = torch.einsum("bk,kld->bld", weights.float(), conds.float())
    return mixed.to(conds.dtype)


# ----------------------------------------------------------------------------- generation


def generate_mix(
    engine,
    reqs: Sequence[MixRequest],
    progress=None,
    cancel=None,
    preview_every: int = 5,
) -> list[GenerationResult]:
    """Run mix requests one after the other on ``engine`` (see the module doc).

    All requests are validated and resolved first (``ValueError``/:class:`MixError` before any
    denoising).  ``progress`` gets ``Progress(step, total, (index,), ...)`` with ``index`` the
    request's position; ``cancel`` is checked before each request and after every step.
    """
    resolved = []
    for req in reqs:
        if req.mode not in MODES:
            raise MixError(f"Unknown mix mode {req.mode!r}; use {' or '.join(MODES)}.")
        if not req.parts:
            raise MixError("A mix needs at least one prompt.")
        base = engine.resolve(req.base)
        rows = [sweep_weights(req.parts, t) for t in req.sweep] or [[p.weight for p in req.parts]] * base.count
        weights = [normalized_weights(row, req.normalize) for row in rows]
        seeds = [base.seed] * len(rows) if req.sweep else base.image_seeds()
        resolved.append((req, base, weights, seeds))
    results = []
    with engine.lock, torch.inference_mode():
        try:
            for index, (req, base, weights, seeds) in enumerate(resolved):
                if is_cancelled(cancel):
                    raise Cancelled()
                with engine.loras.active(base.loras):
                    images = _render(engine, req, base, weights, seeds, index, progress, cancel, preview_every)
                package = _package(engine, req, base, weights, seeds, images)
                results.append(GenerationResult(images=package, request=base))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # as Engine.generate_batch: free the cache for the next (smaller) job
            raise
    return results


def _render(engine, req: MixRequest, base: GenerationRequest, weights, seeds, index, progress, cancel, preview_every):
    texts = [p.text for p in req.parts] + [base.negative]
    embeds = engine.encoder.encode_many(texts, clip_skip=base.clip_skip).to(engine.device)
    # SDXL: the pooled embeddings are mixed exactly as the hidden states ([K + 1, 1, dim]).
    pooled = engine.pooled(texts)
    pooled = None if pooled is None else pooled[:, None]
    w = torch.tensor(weights, dtype=torch.float32, device=engine.device)  # [B, K]
    conds = [embeds[:-1]] + ([] if pooled is None else [pooled[:-1]])
    if req.mode == BLEND:
        conds, w = [_combine(c, w)[:, None] for c in conds], torch.ones(len(weights), 1, device=engine.device)
    else:
        conds = [c[None].expand(len(weights), -1, -1, -1) for c in conds]
    uncond = (embeds[-1:], None if pooled is None else pooled[-1])
    return _denoise(engine, conds, w, uncond, base, seeds, (index,), progress, cancel, preview_every)


def _denoise(engine, conds, guidance, uncond, base: GenerationRequest, seeds, indices, progress, cancel, preview_every):
    """The txt2img loop with guidance ``u + cfg·Σₖ gₖ·(eₖ − u)`` per image.

    ``conds`` is ``[hidden]`` or, on SDXL, ``[hidden, pooled]``: ``[B, K, L, D]`` and ``[B, K, 1, P]``
    (K conditionings per image); ``uncond`` is ``(hidden [1, L, D], pooled [1, P] or None)``;
    ``guidance`` is ``[B, K]``.  With K = 1 and g = 1 this is exactly diffusers' txt2img loop (same
    UNet batch layout).
    """
    conds, pooled = conds[0], (conds[1] if len(conds) > 1 else None)
    uncond, uncond_pooled = uncond
    pipe = engine.txt2img
    batch, k = guidance.shape
    length, dim = conds.shape[-2:]
    pipe.scheduler = scheduler = make_scheduler(base.sampler, engine.scheduler_config)
    scheduler.set_timesteps(base.steps, device=engine.device)
    timesteps = scheduler.timesteps
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = pipe.prepare_latents(
        batch, pipe.unet.config.in_channels, base.height, base.width, conds.dtype, engine.device, generators
    )
    extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
    # Block j of the UNet batch holds every image's j-th input: the uncond first, then conditioning k.
    hidden = torch.cat([uncond.expand(batch, -1, -1), conds.transpose(0, 1).reshape(k * batch, length, dim)])
    pooled_rows = None
    if pooled is not None:
        pooled_rows = torch.cat([uncond_pooled.expand(batch, -1), pooled.transpose(0, 1).reshape(k * batch, -1)])
    state = types.SimpleNamespace(num_timesteps=len(timesteps), scheduler=scheduler)
    on_step = engine.step_callback(indices, [batch], progress, cancel, preview_every)
    chunk = 2 * engine.config.max_count  # UNet rows per call: bounds memory for many parts
    g = guidance.to(conds.dtype)[:, :, None, None, None]
    for i, t in enumerate(timesteps):
        model_in = scheduler.scale_model_input(torch.cat([latents] * (k + 1)), t)
        outs = [
            pipe.unet(
                model_in[a : a + chunk],
                t,
                encoder_hidden_states=hidden[a : a + chunk],
                return_dict=False,
                **engine.unet_added_kwargs(
                    None if pooled_rows is None else pooled_rows[a : a + chunk], base.width, base.height
                ),
            )[0]
            for a in range(0, model_in.shape[0], chunk)
        ]
        noise = outs[0] if len(outs) == 1 else torch.cat(outs)
        uncond_pred, *cond_preds = noise.chunk(k + 1)
        guided = uncond_pred + base.cfg * sum(g[:, j] * (cond_preds[j] - uncond_pred) for j in range(k))
        latents = scheduler.step(guided, t, latents, **extra, return_dict=False)[0]
        if progress is not None or cancel is not None:
            on_step(state, i, t, {"latents": latents})
    decoded = engine.vae_decode(latents, generator=generators)
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def _package(engine, req: MixRequest, base: GenerationRequest, weights, seeds, images) -> list[GeneratedImage]:
    recipe = format_recipe(req.parts)
    base = replace(base, prompt=recipe)
    mix = {"Mix mode": req.mode, "Mix normalised": req.normalize}
    if req.sweep:
        params = engine.image_parameters(base, base.seed) | mix
        params["Mix sweep"] = ", ".join(format_weight(t) for t in req.sweep)
        return [GeneratedImage(image=side_by_side(images), seed=base.seed, parameters=params)]
    return [
        GeneratedImage(
            image=image,
            seed=seed,
            parameters=engine.image_parameters(base, seed) | mix | {"Mix weights": ", ".join(map(format_weight, row))},
        )
        for image, seed, row in zip(images, seeds, weights, strict=True)
    ]


__all__ = [
    "BLEND",
    "COMPOSABLE",
    "MODES",
    "SWEEP_WEIGHTS",
    "MixError",
    "MixPart",
    "MixRequest",
    "blend_embeddings",
    "format_recipe",
    "generate_mix",
    "normalized_weights",
    "parse_recipe",
    "parts_from_pairs",
    "sweep_weights",
]
