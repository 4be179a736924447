"""A remote GPU worker against the embedded one, end to end and side by side in one run.

One bot on a fresh PostgreSQL database offers the toy-world model under two names: ``here`` runs on the bot's
embedded worker thread, ``there`` on a separate ``python -m worker`` process whose results the bot posts when
PostgreSQL notifies it. /imagine alternates between the two, one request at a time (the model's 64 px, 20 steps,
fixed seed), each timed from the invoke to the posted result message; the job's own timestamps split that time
into waiting for a claim, running the batch and announcing the result. Both paths run the production worker
settings (``bench.bot_e2e.WORKER``). Reported: medians per path, remote / embedded, and the remote path's extra
milliseconds.

    python -m bench.remote_worker [--runs 10] [--url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bot_e2e import WORKER
from bench.queue_scale import DEFAULT_URL, pg_database

PATHS = ("here", "there")  # the embedded worker's model name, the remote worker's


async def measure(admin_url: str, runs: int, steps: int = 20) -> dict[str, Any]:
    from discord_emulator import Emulator, EmulatorSettings, configure_discord_py
    from emulated_bot import WorkerProcess, bot_config_data, is_result, result_job_id, running_bot
    from services.config import build_config
    from toyworld import MODEL_DIR

    async with pg_database(admin_url) as url:
        emu = Emulator(EmulatorSettings())
        await emu.start()
        previous = configure_discord_py(emu.api_base, emu.gateway_url)
        folder = Path(tempfile.mkdtemp(prefix="bench-remote-"))
        data = bot_config_data(
            emu, folder / "data", MODEL_DIR,
            storage={"url": url},
            worker={**WORKER, "model": "here"},
            generation={"default_steps": steps, "default_aspect": "square", "max_area": 0},
            credits={"start_balance": 10**9},
            limits={"max_queued_per_user": 10**6},
        )  # fmt: skip
        data["models"] = [{"name": name, "path": str(MODEL_DIR)} for name in PATHS]
        remote = WorkerProcess(folder, data, "there", "remote")
        try:
            async with running_bot(emu, build_config(data, env={})) as env:
                remote.start()
                queue = env.services.queue
                while not any(w.kind == "remote" and w.model == "there" for w in await queue.workers()):
                    if remote.proc.poll() is not None:
                        raise RuntimeError(f"the worker exited; see {remote.log}")
                    await asyncio.sleep(0.1)
                alice, channel = emu.user("alice"), emu.guild().channel("general")

                async def one(model: str) -> dict[str, float]:
                    t0 = time.perf_counter()
                    it = await emu.invoke(alice, channel, "imagine", {"prompt": "a red circle on a white background",
                                                                      "seed": 7, "model": model})  # fmt: skip
                    await it.wait_acked(5)
                    message = await emu.wait_for_message(channel, is_result, timeout=120)
                    e2e = time.perf_counter() - t0
                    job = await queue.get(result_job_id(message))
                    assert job.model == model and job.status == "done", job
                    return {
                        "e2e_ms": 1000 * e2e,
                        "to_claim_ms": 1000 * (job.started_at - job.created_at).total_seconds(),
                        "running_ms": 1000 * (job.finished_at - job.started_at).total_seconds(),
                        "to_post_ms": 1000 * (e2e - (job.finished_at - job.created_at).total_seconds()),
                    }

                for model in PATHS:  # warm-up: first batches load and compile
                    await one(model)
                times: dict[str, list[dict[str, float]]] = {model: [] for model in PATHS}
                for i in range(runs):
                    for model in PATHS if i % 2 == 0 else reversed(PATHS):
                        times[model].append(await one(model))
        finally:
            if remote.proc is not None:
                remote.signal(signal.SIGTERM)
                await remote.exited()
            await emu.stop()
            configure_discord_py(*previous)
            shutil.rmtree(folder, ignore_errors=True)
    med = {
        model: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for model, rows in times.items()
    }
    return {
        "runs": runs,
        "steps": steps,
        "embedded": med["here"],
        "remote": med["there"],
        "remote_over_embedded": med["there"]["e2e_ms"] / med["here"]["e2e_ms"],
        "extra_ms": med["there"]["e2e_ms"] - med["here"]["e2e_ms"],
    }


def run(runs: int = 10, url: str = DEFAULT_URL) -> dict[str, Any]:
    return asyncio.run(measure(url, runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.remote_worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="a PostgreSQL database to create the bench's database from"
    )
    args = parser.parse_args(argv)
    result = run(args.runs, args.url)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
