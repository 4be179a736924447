"""/mix job parameters: a recipe of weighted prompts validated into a mix job, and its sweep.

The recipe syntaxes, the two modes and the sweep are described in :mod:`gen_core.mix`.  A mix
job's ``prompt`` is the recipe written out (``cat:0.7 | kitten:0.3``), so metadata, /history and
the server's banned-word checks see every part; ``parts`` holds the parsed ``(text, weight)`` pairs
the worker renders.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gen_core.mix import (
    BLEND,
    MODES,
    SWEEP_WEIGHTS,
    MixError,
    format_recipe,
    format_weight,
    normalized_weights,
    parse_recipe,
    parts_from_pairs,
)
from services.jobs import ImagineOptions, JobService, UserError
from worker.jobs import JobParams, MixParams


@dataclass
class MixOptions:
    prompts: str
    mode: str = BLEND
    negative: str | None = None
    aspect: str | None = None
    seed: int | None = None
    count: int = 1
    steps: int | None = None
    normalize: bool = True


def unet_passes(mode: str, n_parts: int, renders: int = 1) -> int:
    """UNet evaluations per step for one output image (the cost unit; see ``JobService.cost``)."""
    return renders * (1 + (n_parts if mode != BLEND else 1))


def label(params: MixParams) -> str:
    """What the result message shows: mode, recipe and weights (or the sweep's range)."""
    parts = parts_from_pairs(params.parts)
    normalised = "" if params.normalize else ", not normalised"
    if params.sweep:
        sweep = ", ".join(format_weight(t) for t in params.sweep)
        return f"mix sweep ({params.mix_mode}{normalised}) {parts[0].text} → {parts[1].text} at {sweep}"
    return f"mix ({params.mix_mode}{normalised}): {format_recipe(parts)}"


def mix_params(jobs: JobService, o: MixOptions) -> MixParams:
    """Validate /mix options into the parameters of one mix job (`UserError` when refused)."""
    mode = (o.mode or BLEND).lower()
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}.")
    try:
        parts = parse_recipe(o.prompts, jobs.config.limits.max_mix_prompts)
        if o.normalize:
            normalized_weights([p.weight for p in parts])
    except MixError as exc:
        raise UserError(str(exc)) from None
    settings = jobs.sampling_settings(
        ImagineOptions(prompt="", negative=o.negative, aspect=o.aspect, seed=o.seed, count=o.count, steps=o.steps)
    )
    for part in parts:
        jobs.check_tokens(part.text)
    jobs.check_tokens(settings["negative"])
    params = MixParams(
        prompt=format_recipe(parts),
        user_prompt="",
        parts=tuple((p.text, p.weight) for p in parts),
        mix_mode=mode,
        normalize=o.normalize,
        passes=unet_passes(mode, len(parts)),
        **settings,
    )
    return dataclasses.replace(params, user_prompt=label(params))


def sweep_params(params: JobParams, seed: int, weights: tuple[float, ...] = SWEEP_WEIGHTS) -> MixParams:
    """A sweep of a mix job: the same seed rendered at each weight between its first two prompts."""
    if not isinstance(params, MixParams):
        raise UserError("Only /mix results can be swept.")
    if len(params.parts) < 2:
        raise UserError("A sweep needs at least two prompts in the recipe. Use `/mix` with `a | b`.")
    out = dataclasses.replace(
        params, seed=seed, count=1, sweep=tuple(weights), passes=unet_passes(params.mix_mode, len(params.parts), len(weights))
    )
    return dataclasses.replace(out, user_prompt=label(out))
