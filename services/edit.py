"""/edit (Imagic) job parameters: validation of the options and re-mix derivation (the buttons: cogs/edit.py).

An ``EDIT`` job optimises (stages 1-2 of :mod:`gen_core.imagic`) and samples; its tuned state is kept
on disk under the job id.  An ``EDIT_REMIX`` job samples another η or seed from the tuned state of
its ``source_job`` without optimising, and is priced like a txt2img.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import discord

from gen_core.imagic import PRESETS, ImagicPreset
from services.jobs import UserError, new_seed
from storage import JobKind
from worker.jobs import EditParams, EditRemixParams, JobParams, sampling_fields

EDIT_KINDS = (JobKind.EDIT, JobKind.EDIT_REMIX)
EDIT_PRESET_CHOICES = [discord.app_commands.Choice(name=name, value=name) for name in PRESETS]
ETA_BUTTONS = (0.5, 0.7, 0.9, 1.1)
ETA_RANGE = (-1.0, 2.0)


@dataclass
class EditOptions:
    prompt: str
    eta: float | None = None
    preset: str = "fast"
    seed: int | None = None
    negative: str | None = None


def preset_for(config: Any, name: str) -> ImagicPreset:
    """The named preset with the server's step counts (``[edit]`` in config.toml)."""
    if name not in PRESETS:
        raise UserError(f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
    e = config.edit
    return PRESETS[name].with_steps(getattr(e, f"{name}_embed_steps"), getattr(e, f"{name}_tune_steps"))


def edit_cost_line(jobs: Any, preset_name: str, params: JobParams, policy: Any = None) -> str:
    """The /cost line for an /edit of the size and steps of ``params``, and for its re-mixes."""
    preset = preset_for(jobs.config, preset_name)
    base = sampling_fields(params) | {"count": 1}
    edit = jobs.cost(
        EditParams(**base, init_image="", eta=0.0, preset=preset.name, embed_steps=preset.embed_steps,
                   tune_steps=preset.tune_steps, work_steps=preset.work_steps),
        policy,
    )  # fmt: skip
    remix = jobs.cost(EditRemixParams(**base, source_job=0, eta=0.0), policy)
    return (
        f"\n✏️ An /edit ({preset.name}: {preset.embed_steps} + {preset.tune_steps} optimisation steps) at "
        f"{params.width}×{params.height} would cost **{edit}** credits; each η or reroll re-mix **{remix}**."
    )


def edit_params(jobs: Any, o: EditOptions, width: int, height: int, init_image: str) -> EditParams:
    """Validate /edit options into an edit job's parameters (``init_image``: the stored picture's key)."""
    config = jobs.config
    prompt = o.prompt.strip()
    if not prompt:
        raise UserError("The prompt is empty. Describe the edited image, e.g. `a photo of a pistachio cake`.")
    eta = config.edit.default_eta if o.eta is None else o.eta
    if not math.isfinite(eta) or not ETA_RANGE[0] <= eta <= ETA_RANGE[1]:
        raise UserError(f"eta must be between {ETA_RANGE[0]} and {ETA_RANGE[1]} (0 = the input image, 1 = the text).")
    preset = preset_for(config, o.preset or "fast")
    seed = new_seed() if o.seed is None else o.seed
    if not 0 <= seed < 2**32:
        raise UserError("seed must be between 0 and 4294967295.")
    negative = (o.negative or "").strip()
    jobs.check_tokens(prompt)
    jobs.check_tokens(negative)
    return EditParams(
        prompt=prompt,
        user_prompt=prompt,
        negative=negative,
        width=width,
        height=height,
        steps=config.generation.default_steps,
        cfg=config.generation.default_cfg,
        sampler=config.edit.sampler,
        seed=seed,
        count=1,
        clip_skip=config.model.clip_skip,
        init_image=init_image,
        eta=eta,
        preset=preset.name,
        embed_steps=preset.embed_steps,
        tune_steps=preset.tune_steps,
        work_steps=preset.work_steps,
    )


def remix_params(job_id: int, params: EditParams | EditRemixParams, action: str, index: int | None) -> EditRemixParams:
    """A re-mix of an edit or re-mix ``job_id``: ``eta`` (η = index / 100, same seed) or ``reroll``
    (new seed, same η).  It points at the edit job whose tuned state it samples."""
    if action == "eta" and index is not None:
        eta, seed = index / 100, params.seed
    elif action == "reroll":
        eta, seed = params.eta, new_seed()
    else:
        raise UserError("Edits can be re-mixed with the η buttons or rerolled; other buttons don't apply.")
    source = params.source_job if isinstance(params, EditRemixParams) else job_id
    return EditRemixParams(**{**sampling_fields(params), "seed": seed}, source_job=source, eta=eta)

