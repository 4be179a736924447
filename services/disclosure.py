"""What a member may learn about someone else's job (the ✉️ reaction): the generation settings
anyone could read from the posted picture, never server paths, store keys, training captions or
the names of hypernetworks the member cannot see."""

from __future__ import annotations

from typing import Any

from worker.jobs import JobParams, encode

#: Parameters that describe the picture itself; everything else in a job's parameters is internal.
PUBLIC_KEYS = ("prompt", "negative", "width", "height", "steps", "sampler", "cfg", "clip_skip", "strength", "noise", "eta", "mode")
PRIVATE_MODULE = "a private module"


def shareable_parameters(params: JobParams, seed: int, visible_hypernets: set[str]) -> dict[str, Any]:
    """The parameters of the job's image made with ``seed`` that a member may see; the names of
    hypernetworks they cannot see are replaced."""
    fields = encode(params)
    out = {key: fields[key] for key in PUBLIC_KEYS if key in fields} | {"seed": seed}
    hypernets = getattr(params, "hypernets", ())
    if hypernets:
        out["hypernet"] = ", ".join(
            f"{h.name if h.name in visible_hypernets else PRIVATE_MODULE}:{h.strength:g}" for h in hypernets
        )
    return out
