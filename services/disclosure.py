"""What a member may learn about someone else's job (the ✉️ reaction): the generation settings
anyone could read from the posted picture, never server paths, store keys, training captions or
the names of hypernetworks and LoRAs the member cannot see (an embedding is named by the prompt itself)."""

from __future__ import annotations

from typing import Any

from worker.jobs import JobParams, encode

#: Parameters that describe the picture itself; everything else in a job's parameters is internal.
PUBLIC_KEYS = ("prompt", "negative", "width", "height", "steps", "sampler", "cfg", "clip_skip", "strength", "noise", "eta", "mode")
PRIVATE_MODULE = "a private module"


def shareable_parameters(params: JobParams, seed: int, visible: set[tuple[str, str]]) -> dict[str, Any]:
    """The parameters of the job's image made with ``seed`` that a member may see; the names of modules
    they cannot see (``visible``: ``(kind, name)`` of those they can) are replaced."""
    fields = encode(params)
    out = {key: fields[key] for key in PUBLIC_KEYS if key in fields} | {"seed": seed}

    def shown(kind: str, name: str) -> str:
        return name if (kind, name) in visible else PRIVATE_MODULE

    hypernets = getattr(params, "hypernets", ())
    if hypernets:
        out["hypernet"] = ", ".join(f"{shown('hypernet', h.name)}:{h.strength:g}" for h in hypernets)
    loras = getattr(params, "loras", ())
    if loras:
        out["lora"] = ", ".join(f"{shown('lora', u.name)}:{u.te_weight:g}:{u.unet_weight:g}" for u in loras)
    return out
