"""Job handlers: turn claimed jobs into gen_core requests and run them on the GPU thread."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from typing import Any

from gen_core.types import GeneratedImage, GenerationRequest

# Parameters of an "imagine"-kind job (txt2img, and img2img when it has an init image) that
# must be equal for jobs to share one batched pipeline call.
BATCH_FIELDS = ("width", "height", "steps", "sampler", "cfg", "clip_skip", "strength")


def batch_key(kind: str, params: dict[str, Any]) -> str:
    if kind in ("edit", "hypernet-train"):  # an optimisation is never shared: each runs alone
        return f"{kind}:{uuid.uuid4().hex}"
    if kind == "edit_remix":  # re-mixes of one tuned state share a sampling pass
        kind = f"edit_remix:{params['source_job']}"
    mode = "img2img" if params.get("init_image") else "txt2img"
    values = ":".join(str(params.get(f)) for f in BATCH_FIELDS if mode == "img2img" or f != "strength")
    key = f"{kind}:{mode}:{values}"
    if params.get("modules"):  # hypernetworks are attached per batch: only jobs with the same ones share it
        chain = json.dumps([[m["path"], m["strength"]] for m in params["modules"]])
        key += f":hn={hashlib.sha256(chain.encode()).hexdigest()[:16]}"
    return key


def request_from_params(params: dict[str, Any], init_image: Any = None, job_id: int | None = None) -> GenerationRequest:
    extra = {"Job": job_id} if job_id is not None else {}
    if params.get("mode"):
        extra["Mode"] = params["mode"]
    if params.get("modules"):
        extra["Hypernet"] = ", ".join(f"{m['name']}:{m['strength']:g}" for m in params["modules"])
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


def _outpaint_request(job: Any, image: Any) -> Any:
    from gen_core.outpaint import InpaintRequest, OutpaintPlan, outpaint_inputs

    p = job.params
    plan = OutpaintPlan(canvas=(p["width"], p["height"]), box=tuple(p["box"]), downscaled=False)
    canvas, mask = outpaint_inputs(image, plan, p["mask_blur"], seed=p["seed"])
    return InpaintRequest(request_from_params({**p, "mode": "outpaint"}, canvas, job.id), mask)


def _inpaint_request(job: Any, image: Any, mask: Any) -> Any:
    from gen_core.outpaint import InpaintRequest, feather_mask, fill_masked

    p = job.params
    filled = fill_masked(image, mask, p.get("fill", "original"), seed=p["seed"])
    return InpaintRequest(request_from_params({**p, "mode": "inpaint"}, filled, job.id), feather_mask(mask, p["mask_blur"]))


def run_inpaint(
    engine: Any, jobs: list[Any], inputs: dict[int, dict[str, Any]], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """Outpaint and inpaint jobs: one batched inpainting call; outputs keep the original pixels."""
    from gen_core.outpaint import inpaint_batch

    items = [
        _outpaint_request(job, inputs[job.id]["init_image"])
        if job.kind == "outpaint"
        else _inpaint_request(job, inputs[job.id]["init_image"], inputs[job.id]["mask"])
        for job in jobs
    ]
    return inpaint_batch(engine, items, progress=progress, cancel=cancel, preview_every=preview_every)


def run_mix(
    engine: Any, jobs: list[Any], inputs: dict[int, dict[str, Any]], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """/mix jobs (embedding blends, composable prompts, sweeps), one after the other."""
    from gen_core.mix import MixRequest, generate_mix, parts_from_pairs

    requests = [
        MixRequest(
            base=request_from_params(job.params, job_id=job.id),
            parts=parts_from_pairs(job.params["parts"]),
            mode=job.params["mix_mode"],
            normalize=job.params.get("normalize", True),
            sweep=tuple(job.params.get("sweep", ())),
        )
        for job in jobs
    ]
    results = generate_mix(engine, requests, progress=progress, cancel=cancel, preview_every=preview_every)
    return [result.images for result in results]


def run_edit(
    cache: Any, engine: Any, jobs: list[Any], inputs: dict[int, dict[str, Any]], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """/edit jobs one by one: Imagic stages 1-2 (state kept in `cache` under the job id), then a sample."""
    from gen_core import imagic

    out = []
    for job in jobs:
        p = job.params
        preset = imagic.PRESETS[p["preset"]].with_steps(p["embed_steps"], p["tune_steps"])
        request = request_from_params({**p, "mode": "edit"}, job_id=job.id)
        state, _log = imagic.tune(engine, inputs[job.id]["init_image"], request, preset, progress=progress, cancel=cancel)
        cache.put(job.id, state)
        results = imagic.remix(engine, state, [request], [p["eta"]], progress=progress, cancel=cancel, preview_every=preview_every)
        out.append(results[0].images)
    return out


def run_edit_remix(
    cache: Any, engine: Any, jobs: list[Any], inputs: dict[int, dict[str, Any]], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """Re-mixes (another η or seed) from kept tuned states: one sampling pass per source edit."""
    from gen_core import imagic

    by_source: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_source.setdefault(job.params["source_job"], []).append(i)
    out: list[list[GeneratedImage]] = [[] for _ in jobs]
    for source, members in by_source.items():
        state = cache.get(source)
        if state is None:
            raise ValueError(f"the tuned state of edit #{source} is no longer kept; run /edit again to re-mix it")
        requests = [request_from_params({**jobs[i].params, "mode": "edit remix"}, job_id=jobs[i].id) for i in members]
        etas = [jobs[i].params["eta"] for i in members]
        results = imagic.remix(engine, state, requests, etas, progress=progress, cancel=cancel, preview_every=preview_every)
        for i, result in zip(members, results, strict=True):
            out[i] = result.images
    return out


def edit_handlers(cache: Any) -> dict[str, Any]:
    """The /edit handlers bound to the on-disk cache of tuned states (a `gen_core.imagic.TunedCache`)."""
    return {"edit": functools.partial(run_edit, cache), "edit_remix": functools.partial(run_edit_remix, cache)}


def run_with_modules(
    cache: Any, handler: Any, engine: Any, jobs: list[Any], inputs: dict[int, dict[str, Any]], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """`handler` with the batch's hypernetworks (equal for all its jobs: see batch_key) attached, and
    the UNet's own attention processors put back afterwards."""
    from gen_core.hypernetwork import applied

    chain = [(cache.get(m["path"], engine.device), m["strength"]) for m in jobs[0].params.get("modules") or ()]
    with applied(engine, chain):
        return handler(engine, jobs, inputs, progress, cancel, preview_every)


def run_hypernet_train(
    engine: Any, jobs: list[Any], inputs: dict[int, dict[str, Any]], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """Train the job's hypernetwork (checkpoints beside the module file), save it, then sample with it."""
    from pathlib import Path

    from gen_core import hypernetwork
    from gen_core.buckets import scale_buckets

    (job,) = jobs
    p = job.params
    path = Path(p["module_path"])
    config = hypernetwork.TrainConfig(
        steps=p["train_steps"], lr=p["lr"], batch_size=p["batch_size"], shallow_penalty=p["shallow_penalty"],
        checkpoint_every=p["checkpoint_every"], clip_skip=p["clip_skip"], seed=p["seed"],
    )  # fmt: skip
    buckets = scale_buckets(p["train_area"])
    result = hypernetwork.train(
        engine, p["module_name"], inputs[job.id]["train_images"], p["captions"], buckets, config,
        progress=progress, cancel=cancel, checkpoint=lambda hn, step: hn.save(path.with_name(path.stem + ".checkpoint.safetensors")),
    )  # fmt: skip
    result.hypernetwork.save(path)
    path.with_name(path.stem + ".checkpoint.safetensors").unlink(missing_ok=True)
    sample_params = {**p, "mode": "hypernet sample", "modules": [{"name": p["module_name"], "strength": 1.0}]}
    request = request_from_params(sample_params, job_id=job.id)
    with hypernetwork.applied(engine, [(result.hypernetwork, 1.0)]):
        sample = engine.generate(request, progress=progress, cancel=cancel, preview_every=preview_every)
    return [sample.images]


def hypernet_handlers(cache: Any) -> dict[str, Any]:
    """/imagine with the jobs' hypernetworks (loaded through `cache`, a `gen_core.hypernetwork.ModuleCache`)
    and hypernetwork training."""
    return {"imagine": functools.partial(run_with_modules, cache, run_imagine), "hypernet-train": run_hypernet_train}


# Kinds whose input images reach the handler at their stored size (not resized to the job's size).
RAW_INPUT_KINDS = ("outpaint", "inpaint")

HANDLERS = {"imagine": run_imagine, "outpaint": run_inpaint, "inpaint": run_inpaint, "mix": run_mix}
