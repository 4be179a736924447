"""``python -m worker``: a GPU worker process with no Discord at all, for more GPUs than the bot's machine has.

It reads the bot's config.toml (the same database and image store), loads one model (``[worker] model``, else
the default), advertises it in the live-worker registry with what it can run, claims batches in the queue's
fair order (servers, then members), writes the images to the shared store and completes the jobs in SQL; its
progress and previews go to SQL too. The bot posts the results (it is told by PostgreSQL's ``NOTIFY``, or finds
them by polling on SQLite) — exactly once, by the announcing machinery every result already goes through.
SIGTERM (or Ctrl-C) drains: no new claims, the running batch finishes (for up to ``[worker] drain_s``, else it
goes back to the queue), and the worker leaves the registry.

``python -m worker status`` lists the live workers, their jobs and the queue depth per server.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import sys
from typing import Any

from gen_core.geometry import Geometry
from gen_core.hypernetwork import ModuleCache
from gen_core.imagic import TunedCache
from gen_core.safety import load_checker
from services.app import capability, default_engine_loader, image_store, load_inputs
from services.config import Config, ConfigError, load_config
from services.rules import screen_images
from storage import Database, JobQueue, masked_url
from worker import QueueProgress, Worker
from worker.handlers import handlers

log = logging.getLogger("worker")


def build_worker(config: Config, engine_loader: Any = None) -> tuple[Worker, Database]:
    """The remote worker of ``config``'s model and its database handle (not started)."""
    w = config.worker
    name = w.model or config.default_model
    model = config.models[name]
    # sizes left to the model (config 0 / -1) follow this worker's model, as the bot's follow its default one
    config.generation.fit_to_model(Geometry.of_model(config.model_path_of(model), model.family))
    db = Database(config.database_url)
    queue = JobQueue(db)
    store = image_store(config)
    kinds = handlers(TunedCache(config.data_dir / "imagic", config.edit.cache_mb * 2**20), ModuleCache())
    checker: dict[str, Any] = {}

    async def screen(params: Any, images: list[Any]) -> list[Any]:
        return await screen_images(checker.get("check"), worker.gpu, params, images)

    def load() -> Any:
        engine = (engine_loader or default_engine_loader(config, model))()
        checker["check"] = load_checker(config.moderation.image_check, config.model_path_of(model))
        return engine

    worker = Worker(
        queue=queue,
        store=store,
        engine_loader=load,
        handlers=kinds,
        load_inputs=functools.partial(load_inputs, store, config.limits.max_input_pixels),
        progress=QueueProgress(queue, w.progress_interval_s),
        kind="remote",
        capability=capability(config, name, list(kinds)),
        max_batch=w.max_batch,
        lease_s=w.lease_s,
        max_attempts=w.max_attempts,
        poll_interval_s=w.poll_interval_s,
        preview_every=w.preview_every,
        screen=screen,
    )
    return worker, db


async def run(config: Config) -> None:
    worker, db = build_worker(config)
    await db.upgrade()  # the same migrations as the bot; a no-op once it ran them
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info("worker %s serves %s on %s", worker.worker_id, worker.capability, masked_url(config.database_url))
    await stop.wait()
    log.info("draining: no new claims; the running batch has %.0f s to finish", config.worker.drain_s)
    await worker.stop(timeout=config.worker.drain_s)
    await db.close()
    log.info("worker %s stopped", worker.worker_id)


async def status(config: Config) -> str:
    """Live workers, their jobs and the queue depth per server, as text."""
    db = Database(config.database_url)
    try:
        queue = JobQueue(db)
        workers = await queue.workers()
        running = await queue.list(statuses=["running"], limit=10_000)
        depth = await queue.depth_by_guild()
    finally:
        await db.close()
    lines = [f"{len(workers)} worker(s)"]
    for w in workers:
        jobs = [j.id for j in running if j.worker_id == w.id]
        serves = f"model {w.model}, max area {w.max_area}" if w.model else "posts results"
        lines.append(f"  {w.id} [{w.kind}] {serves} · beat {w.heartbeat_at:%H:%M:%S} · jobs {jobs or '-'}")
    lines.append("queue per server (queued / running):")
    lines += [f"  {guild}: {d['queued']} / {d['running']}" for guild, d in sorted(depth.items())] or ["  empty"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description="A GPU worker process for the bot's queue.")
    parser.add_argument("command", nargs="?", choices=["run", "status"], default="run")
    parser.add_argument("--config", default="config.toml", help="the bot's config.toml (default: config.toml)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        print(asyncio.run(status(config)))
        return 0
    asyncio.run(run(config))
    return 0
