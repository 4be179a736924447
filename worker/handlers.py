"""Job handlers: turn claimed jobs into gen_core requests and run them on the GPU thread."""

from __future__ import annotations

from typing import Any

from gen_core.types import GeneratedImage, GenerationRequest

# Parameters of an "imagine"-kind job (txt2img, and img2img when it has an init image) that
# must be equal for jobs to share one batched pipeline call.
BATCH_FIELDS = ("width", "height", "steps", "sampler", "cfg", "clip_skip", "strength")


def batch_key(kind: str, params: dict[str, Any]) -> str:
    mode = "img2img" if params.get("init_image") else "txt2img"
    values = ":".join(str(params.get(f)) for f in BATCH_FIELDS if mode == "img2img" or f != "strength")
    return f"{kind}:{mode}:{values}"


def request_from_params(params: dict[str, Any], init_image: Any = None, job_id: int | None = None) -> GenerationRequest:
    extra = {"Job": job_id} if job_id is not None else {}
    if params.get("mode"):
        extra["Mode"] = params["mode"]
    return GenerationRequest(
        prompt=params["prompt"],
        negative=params.get("negative", ""),
        width=params["width"],
        height=params["height"],
        steps=params["steps"],
        cfg=params["cfg"],
        sampler=params["sampler"],
        seed=params["seed"],
        count=params.get("count", 1),
        clip_skip=params.get("clip_skip", 2),
        init_image=init_image,
        strength=params.get("strength", 0.7),
        extra=extra,
    )


def run_imagine(
    engine: Any, jobs: list[Any], inputs: dict[int, dict[str, Any]], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """One pipeline call for the whole batch of compatible jobs; images grouped per job."""
    requests = [request_from_params(job.params, inputs[job.id].get("init_image"), job.id) for job in jobs]
    results = engine.generate_batch(requests, progress=progress, cancel=cancel, preview_every=preview_every)
    return [result.images for result in results]


HANDLERS = {"imagine": run_imagine}
