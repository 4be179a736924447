"""What a member may learn about someone else's job (the ✉️ reaction): the generation settings
anyone could read from the posted picture, never server paths, store keys, training captions or
the names of modules the member cannot see."""

from __future__ import annotations

from typing import Any

#: Parameters that describe the picture itself; everything else in a job's parameters is internal.
PUBLIC_KEYS = ("prompt", "negative", "width", "height", "steps", "sampler", "cfg", "seed", "clip_skip", "strength", "eta", "mode")
PRIVATE_MODULE = "a private module"


def shareable_parameters(params: dict[str, Any], visible_modules: set[str]) -> dict[str, Any]:
    """The job's parameters a member may see; module names they cannot see are replaced."""
    out = {key: params[key] for key in PUBLIC_KEYS if key in params}
    modules = params.get("modules") or []
    if modules:
        out["hypernet"] = ", ".join(
            f"{m['name'] if m['name'] in visible_modules else PRIVATE_MODULE}:{m['strength']:g}" for m in modules
        )
    return out
