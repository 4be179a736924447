"""What the server rules cost on the submission path: ``JobService.submit`` (validation, pricing, credit
reservation, enqueue on SQLite) with the guild's rules applied — a ban check and channel allow/deny
(`Moderation.refusal`), per-guild and per-channel limits, banned words and regexes, the server negative and
NSFW gating (`Moderation.apply`) — against the same submissions without rules, interleaved in one run.

    python -m bench.admin_rules [--jobs N] [--words W] [--rounds R]

``run(...)`` returns the measurements as a dict for a bench runner. The bot is replaced by an object that
only answers ``get_channel`` (no channel is age-restricted): the rules read everything else from SQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gen_core.geometry import SD1
from services.config import Config
from services.jobs import JobService
from services.rules import ServerRules
from services.settings import ServerSettings
from storage import CostPolicy, Database, JobQueue, Ledger, moderation, settings
from worker.jobs import ImagineParams

GUILD, CHANNEL = 1, 10
PARAMS = ImagineParams(prompt="masterpiece, a cat in a spacesuit, detailed", user_prompt="a cat in a spacesuit, detailed",
                       negative="lowres", width=512, height=768, steps=28, cfg=7.0, sampler="Euler a", seed=1)


async def _setup(db_path: Path, n_words: int) -> tuple[Database, Any, JobService, JobService]:
    db = Database(f"sqlite+aiosqlite:///{db_path}")
    await db.upgrade()
    policy = CostPolicy(start_balance=10**9, max_queued_per_user=10**9, topup_period_s=0)
    config = Config()
    config.generation.fit_to_model(SD1)
    queue, ledger = JobQueue(db, policy), Ledger(db, policy)
    services = SimpleNamespace(db=db, config=config, ledger=ledger, queue=queue, settings=ServerSettings(db, config, policy),
                               bot=SimpleNamespace(get_channel=lambda _id: None))
    rules = ServerRules(services)
    for i in range(n_words):
        await moderation.add_banned_word(db, GUILD, f"re:forbidden{i}\\d+" if i % 5 == 0 else f"forbidden word {i}", 0)
    await settings.update_guild_settings(db, GUILD, {"limits": {"max_steps": 40}, "negative": "bad hands"}, 0)
    await settings.update_channel_settings(db, GUILD, CHANNEL, patch={"limits": {"max_count": 2}}, actor_id=0)
    await moderation.ban(db, GUILD, 999, 0, "bench")
    return db, services, JobService(config, SD1, queue, ledger, rules=rules), JobService(config, SD1, queue, ledger)


async def _submit(jobs: JobService, check: ServerRules | None, n: int, tag: str) -> list[float]:
    latencies = []
    for i in range(n):
        t0 = time.perf_counter()
        if check is not None:
            assert await check.refusal(GUILD, 100 + i % 8, CHANNEL) is None
        await jobs.submit(params_list=[PARAMS], guild_id=GUILD, channel_id=CHANNEL,
                          user_id=100 + i % 8, request_key=f"{tag}:{i}")
        latencies.append(time.perf_counter() - t0)
    return latencies


async def _run(n_jobs: int, n_words: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db, _services, with_rules, without = await _setup(Path(tmp) / "bench.db", n_words)
        try:
            await _submit(with_rules, with_rules.rules, 20, "warm-a")
            await _submit(without, None, 20, "warm-b")
            ruled: list[float] = []
            bare: list[float] = []
            for r in range(rounds):  # interleaved, so both see the same database size
                ruled += await _submit(with_rules, with_rules.rules, n_jobs // rounds, f"a{r}")
                bare += await _submit(without, None, n_jobs // rounds, f"b{r}")
        finally:
            await db.close()
    med_ruled, med_bare = statistics.median(ruled), statistics.median(bare)
    return {
        "jobs_each": len(ruled),
        "banned_words": n_words,
        "median_submit_ms_with_rules": med_ruled * 1000,
        "median_submit_ms_without": med_bare * 1000,
        "ratio_with_over_without": med_ruled / med_bare,
        "rules_overhead_ms": (med_ruled - med_bare) * 1000,
    }


def run(n_jobs: int = 400, n_words: int = 50, rounds: int = 4) -> dict[str, Any]:
    return asyncio.run(_run(n_jobs, n_words, rounds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    result = run(args.jobs, args.words, args.rounds)
    print(json.dumps(result, indent=2))  # noqa: T201 - a command-line report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
