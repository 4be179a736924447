"""/edit (Imagic) job parameters: validation of the options, re-mix derivation, the result buttons.

An "edit" job optimises (stages 1-2 of :mod:`gen_core.imagic`) and samples; its tuned state is kept
on disk under the job id.  An "edit_remix" job samples another η or seed from the tuned state of
its ``source_job`` without optimising, and is priced like a txt2img.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import discord

from gen_core.imagic import PRESETS, ImagicPreset
from services import ui
from services.jobs import UserError, new_seed

EDIT_KINDS = ("edit", "edit_remix")
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


def edit_cost_line(jobs: Any, preset_name: str, params: dict[str, Any], policy: Any = None) -> str:
    """The /cost line for an /edit of the size and steps of ``params``, and for its re-mixes."""
    preset = preset_for(jobs.config, preset_name)
    base = {**params, "count": 1}
    edit = jobs.cost("edit", {**base, "work_steps": preset.work_steps}, policy)
    remix = jobs.cost("edit_remix", base, policy)
    return (
        f"\n✏️ An /edit ({preset.name}: {preset.embed_steps} + {preset.tune_steps} optimisation steps) at "
        f"{params['width']}×{params['height']} would cost **{edit}** credits; each η or reroll re-mix **{remix}**."
    )


def edit_params(jobs: Any, o: EditOptions, width: int, height: int) -> dict[str, Any]:
    """Validate /edit options into an "edit" job's parameters (the image key is added by the caller)."""
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
    return {
        "prompt": prompt,
        "user_prompt": prompt,
        "negative": negative,
        "width": width,
        "height": height,
        "steps": config.generation.default_steps,
        "cfg": config.generation.default_cfg,
        "sampler": config.edit.sampler,
        "seed": seed,
        "count": 1,
        "clip_skip": config.model.clip_skip,
        "eta": eta,
        "preset": preset.name,
        "embed_steps": preset.embed_steps,
        "tune_steps": preset.tune_steps,
        "work_steps": preset.work_steps,
    }


def remix_params(job: Any, action: str, index: int | None) -> dict[str, Any]:
    """An "edit_remix" job from an edit or remix: ``eta`` (η = index / 100, same seed) or
    ``reroll`` (new seed, same η).  It points at the edit job whose tuned state it samples."""
    # no input image and no optimisation: priced like a txt2img
    params = {k: v for k, v in job.params.items() if k not in ("init_image", "work_steps")}
    params["source_job"] = job.params["source_job"] if job.kind == "edit_remix" else job.id
    if action == "eta" and index is not None:
        params["eta"] = index / 100
    elif action == "reroll":
        params["seed"] = new_seed()
    else:
        raise UserError("Edits can be re-mixed with the η buttons or rerolled; other buttons don't apply.")
    return params


def edit_view(job_id: int, n_images: int) -> discord.ui.View:
    """Under an edit result: reroll, delete, and one button per η of ETA_BUTTONS."""
    view = ui.result_view(job_id, n_images, actions=("reroll", "delete"))
    for eta in ETA_BUTTONS:
        view.add_item(ui.JobButton(job_id, "eta", round(eta * 100), label=f"η {eta}", row=1))
    return view


def register_views() -> None:
    for kind in EDIT_KINDS:
        ui.RESULT_VIEWS[kind] = edit_view
