"""Job handlers: turn claimed jobs (typed `Task`s) into gen_core requests and run them on the GPU thread.

A handler is ``handler(engine, tasks, progress, cancel, preview_every) -> images per task``; every
task of one call has the same kind and batch group (see ``worker.jobs``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from gen_core import embeddings as embeddings_
from gen_core import lora
from gen_core.types import GeneratedImage, GenerationRequest
from worker.jobs import (
    EditParams,
    EditRemixParams,
    EmbeddingUse,
    HypernetTrainParams,
    ImagineMode,
    ImagineParams,
    InpaintParams,
    JobKind,
    JobParams,
    LoraUse,
    MixParams,
    OutpaintParams,
    Task,
)


def sampling_request(
    params: JobParams, *, job_id: int | None = None, mode: str | None = None, hypernets: str | None = None, init_image: Any = None
) -> GenerationRequest:
    """The gen_core request of a job's sampling settings with its LoRAs and embeddings; ``mode`` and
    ``hypernets`` go into the PNG metadata."""
    extra: dict[str, Any] = {"Job": job_id} if job_id is not None else {}
    if mode:
        extra["Mode"] = mode
    if hypernets:
        extra["Hypernet"] = hypernets
    loras: tuple[LoraUse, ...] = getattr(params, "loras", ())
    if loras:
        extra["Lora"] = ", ".join(_lora_label(u) for u in loras)
    embeddings: tuple[EmbeddingUse, ...] = getattr(params, "embeddings", ())
    strength = getattr(params, "strength", None)
    noise = getattr(params, "noise", None)
    return GenerationRequest(
        prompt=params.prompt,
        negative=params.negative,
        width=params.width,
        height=params.height,
        steps=params.steps,
        cfg=params.cfg,
        sampler=params.sampler,
        seed=params.seed,
        count=params.count,
        clip_skip=params.clip_skip,
        guidance_min_sigma=params.guidance_min_sigma,
        init_image=init_image,
        strength=0.7 if strength is None else strength,
        noise=noise or 0.0,
        extra=extra,
        loras=tuple(lora.LoraUse(u.path, u.unet_weight, u.te_weight) for u in loras),
        embeddings=tuple(embeddings_.EmbeddingUse(e.name, e.path) for e in embeddings),
    )


def _lora_label(use: LoraUse) -> str:
    """``name:w``, or A1111's ``name:te:unet`` when the weights differ."""
    if use.te_weight == use.unet_weight:
        return f"{use.name}:{use.unet_weight:g}"
    return f"{use.name}:{use.te_weight:g}:{use.unet_weight:g}"


def imagine_request(task: Task) -> GenerationRequest:
    p: ImagineParams = task.params
    return sampling_request(
        p,
        job_id=task.job_id,
        mode=None if p.mode == ImagineMode.TEXT else p.mode.value,
        hypernets=", ".join(f"{h.name}:{h.strength:g}" for h in p.hypernets),
        init_image=task.inputs.image,
    )


def run_imagine(engine: Any, tasks: list[Task], progress, cancel, preview_every: int) -> list[list[GeneratedImage]]:
    """One pipeline call for the whole batch of compatible jobs; images grouped per job."""
    requests = [imagine_request(task) for task in tasks]
    results = engine.generate_batch(requests, progress=progress, cancel=cancel, preview_every=preview_every)
    return [result.images for result in results]


def _outpaint_request(task: Task) -> Any:
    from gen_core.outpaint import InpaintRequest, OutpaintPlan, outpaint_inputs

    p: OutpaintParams = task.params
    plan = OutpaintPlan(canvas=(p.width, p.height), box=p.box, downscaled=False)
    canvas, mask = outpaint_inputs(task.inputs.image, plan, p.mask_blur, seed=p.seed)
    return InpaintRequest(sampling_request(p, job_id=task.job_id, mode="outpaint", init_image=canvas), mask)


def _inpaint_request(task: Task) -> Any:
    from gen_core.outpaint import InpaintRequest, feather_mask, fill_masked

    p: InpaintParams = task.params
    filled = fill_masked(task.inputs.image, task.inputs.mask, p.fill, seed=p.seed)
    request = sampling_request(p, job_id=task.job_id, mode="inpaint", init_image=filled)
    return InpaintRequest(request, feather_mask(task.inputs.mask, p.mask_blur))


def run_inpaint(engine: Any, tasks: list[Task], progress, cancel, preview_every: int) -> list[list[GeneratedImage]]:
    """Outpaint and inpaint jobs: one batched inpainting call; outputs keep the original pixels."""
    from gen_core.outpaint import inpaint_batch

    items = [_outpaint_request(t) if isinstance(t.params, OutpaintParams) else _inpaint_request(t) for t in tasks]
    return inpaint_batch(engine, items, progress=progress, cancel=cancel, preview_every=preview_every)


def run_mix(engine: Any, tasks: list[Task], progress, cancel, preview_every: int) -> list[list[GeneratedImage]]:
    """/mix jobs (embedding blends, composable prompts, sweeps), one after the other."""
    from gen_core.mix import MixRequest, generate_mix, parts_from_pairs

    requests = []
    for task in tasks:
        p: MixParams = task.params
        base = sampling_request(p, job_id=task.job_id)
        requests.append(MixRequest(base=base, parts=parts_from_pairs(p.parts), mode=p.mix_mode, normalize=p.normalize, sweep=p.sweep))
    results = generate_mix(engine, requests, progress=progress, cancel=cancel, preview_every=preview_every)
    return [result.images for result in results]


def run_edit(cache: Any, engine: Any, tasks: list[Task], progress, cancel, preview_every: int) -> list[list[GeneratedImage]]:
    """/edit jobs one by one: Imagic stages 1-2 (state kept in `cache` under the job id), then a sample."""
    from gen_core import imagic

    out = []
    for task in tasks:
        p: EditParams = task.params
        preset = imagic.PRESETS[p.preset].with_steps(p.embed_steps, p.tune_steps)
        request = sampling_request(p, job_id=task.job_id, mode="edit")
        state, _log = imagic.tune(engine, task.inputs.image, request, preset, progress=progress, cancel=cancel)
        cache.put(task.job_id, state)
        results = imagic.remix(engine, state, [request], [p.eta], progress=progress, cancel=cancel, preview_every=preview_every)
        out.append(results[0].images)
    return out


def run_edit_remix(cache: Any, engine: Any, tasks: list[Task], progress, cancel, preview_every: int) -> list[list[GeneratedImage]]:
    """Re-mixes (another η or seed) from kept tuned states: one sampling pass per source edit."""
    from gen_core import imagic

    by_source: dict[int, list[int]] = {}
    for i, task in enumerate(tasks):
        p: EditRemixParams = task.params
        by_source.setdefault(p.source_job, []).append(i)
    out: list[list[GeneratedImage]] = [[] for _ in tasks]
    for source, members in by_source.items():
        state = cache.get(source)
        if state is None:
            raise ValueError(f"the tuned state of edit #{source} is no longer kept; run /edit again to re-mix it")
        requests = [sampling_request(tasks[i].params, job_id=tasks[i].job_id, mode="edit remix") for i in members]
        etas = [tasks[i].params.eta for i in members]
        results = imagic.remix(engine, state, requests, etas, progress=progress, cancel=cancel, preview_every=preview_every)
        for i, result in zip(members, results, strict=True):
            out[i] = result.images
    return out


def run_with_hypernets(
    cache: Any, handler: Any, engine: Any, tasks: list[Task], progress, cancel, preview_every: int
) -> list[list[GeneratedImage]]:
    """`handler` with the batch's hypernetworks (equal for all its jobs: see ImagineParams.batch_group)
    attached, and the UNet's own attention processors put back afterwards."""
    from gen_core.hypernetwork import applied

    p: ImagineParams = tasks[0].params
    chain = [(cache.get(h.path, engine.device), h.strength) for h in p.hypernets]
    with applied(engine, chain):
        return handler(engine, tasks, progress, cancel, preview_every)


def run_hypernet_train(engine: Any, tasks: list[Task], progress, cancel, preview_every: int) -> list[list[GeneratedImage]]:
    """Train the job's hypernetwork, sample with it, then save it: a training that fails or is cancelled
    (also while sampling) leaves no file; a re-queued one starts again from the beginning."""
    from gen_core import hypernetwork

    (task,) = tasks
    p: HypernetTrainParams = task.params
    config = hypernetwork.TrainConfig(
        steps=p.train_steps, lr=p.lr, batch_size=p.batch_size, shallow_penalty=p.shallow_penalty,
        clip_skip=p.clip_skip, seed=p.seed,
    )  # fmt: skip
    buckets = engine.geometry.buckets(p.train_area)  # the loaded model's grid
    result = hypernetwork.train(
        engine, p.module_name, list(task.inputs.train_images), list(p.captions), buckets, config,
        progress=progress, cancel=cancel,
    )  # fmt: skip
    request = sampling_request(p, job_id=task.job_id, mode="hypernet sample", hypernets=f"{p.module_name}:1")
    with hypernetwork.applied(engine, [(result.hypernetwork, 1.0)]):
        sample = engine.generate(request, progress=progress, cancel=cancel, preview_every=preview_every)
    result.hypernetwork.save(Path(p.module_path))
    return [sample.images]


def handlers(edit_cache: Any, hypernet_cache: Any) -> dict[JobKind, Any]:
    """A handler per job kind; /edit's bound to the on-disk cache of tuned states (a
    `gen_core.imagic.TunedCache`), /imagine's to the loaded hypernetworks (a `gen_core.hypernetwork.ModuleCache`)."""
    return {
        JobKind.IMAGINE: functools.partial(run_with_hypernets, hypernet_cache, run_imagine),
        JobKind.EDIT: functools.partial(run_edit, edit_cache),
        JobKind.EDIT_REMIX: functools.partial(run_edit_remix, edit_cache),
        JobKind.OUTPAINT: run_inpaint,
        JobKind.INPAINT: run_inpaint,
        JobKind.MIX: run_mix,
        JobKind.HYPERNET_TRAIN: run_hypernet_train,
    }
