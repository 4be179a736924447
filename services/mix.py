"""/mix job parameters: a recipe of weighted prompts validated into a "mix" job, and its sweep.

The recipe syntaxes, the two modes and the sweep are described in :mod:`gen_core.mix`.  A mix
job's ``prompt`` is the recipe written out (``cat:0.7 | kitten:0.3``), so metadata, /history and
the server's banned-word checks see every part; ``parts`` holds the parsed ``[text, weight]`` pairs
the worker renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def label(params: dict[str, Any]) -> str:
    """What the result message shows: mode, recipe and weights (or the sweep's range)."""
    parts = parts_from_pairs(params["parts"])
    normalised = "" if params.get("normalize", True) else ", not normalised"
    if params.get("sweep"):
        sweep = ", ".join(format_weight(t) for t in params["sweep"])
        return f"mix sweep ({params['mix_mode']}{normalised}) {parts[0].text} → {parts[1].text} at {sweep}"
    return f"mix ({params['mix_mode']}{normalised}): {format_recipe(parts)}"


def mix_params(jobs: JobService, o: MixOptions) -> dict[str, Any]:
    """Validate /mix options into the parameters of one "mix" job (`UserError` when refused)."""
    mode = (o.mode or BLEND).lower()
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}.")
    try:
        parts = parse_recipe(o.prompts, jobs.config.limits.max_mix_prompts)
        if o.normalize:
            normalized_weights([p.weight for p in parts])
    except MixError as exc:
        raise UserError(str(exc)) from None
    settings = jobs.common_params(
        ImagineOptions(prompt="", negative=o.negative, aspect=o.aspect, seed=o.seed, count=o.count, steps=o.steps)
    )
    for part in parts:
        jobs.check_tokens(part.text)
    jobs.check_tokens(settings["negative"])
    params = {
        "prompt": format_recipe(parts),
        "parts": [[p.text, p.weight] for p in parts],
        "mix_mode": mode,
        "normalize": o.normalize,
        "unet_passes": unet_passes(mode, len(parts)),
        **settings,
    }
    params["user_prompt"] = label(params)
    return params


def sweep_params(params: dict[str, Any], seed: int, weights: tuple[float, ...] = SWEEP_WEIGHTS) -> dict[str, Any]:
    """A sweep of a mix job: the same seed rendered at each weight between its first two prompts."""
    if "parts" not in params:
        raise UserError("Only /mix results can be swept.")
    parts = parts_from_pairs(params["parts"])
    if len(parts) < 2:
        raise UserError("A sweep needs at least two prompts in the recipe. Use `/mix` with `a | b`.")
    out = dict(params, seed=seed, count=1, sweep=list(weights))
    out["unet_passes"] = unet_passes(params["mix_mode"], len(parts), len(weights))
    out["user_prompt"] = label(out)
    return out
