"""More than one GPU, for real: the bot (no worker of its own) and separate ``python -m worker`` processes on the
PostgreSQL service, the tiny model. 60 jobs from 10 members in 3 servers: each answered exactly once, claimed in
the fair order across servers, the ledger equal to the balances; a worker killed with SIGKILL mid-batch loses
nothing (its jobs finish on another); a worker started late takes work; a worker never runs another model's job.
"""

from __future__ import annotations

import signal
from collections import Counter

from bench.crash_audit import Members, audit
from emulated_bot import WorkerProcess, bot_config_data, running_bot
from services.config import build_config
from services.worker_process import status
from storage import Database, JobQueue
from tests.test_crash_recovery import until
from tests.test_storage_support import create_pg_database, drop_pg_database

MAX_BATCH = 2


async def test_three_workers_sixty_jobs_fair_exactly_once_kill_9_late_join_and_models(
    make_emulator, tmp_path, tiny_model_dir
):
    url = await create_pg_database()
    emu = await make_emulator()
    # three servers: one member with a burst, three members, six members — 20 jobs each
    people = [emu.add_user(f"m{i}") for i in range(10)]
    guilds = [emu.guild()]
    for name in ("Second", "Third"):
        guild = emu.add_guild(name, people[0])
        emu.add_channel(guild, "general")
        guilds.append(guild)
    crowds = [people[:1], people[1:4], people[4:10]]
    members = []
    for guild, crowd in zip(guilds, crowds, strict=True):
        for user in crowd:
            emu.add_member(guild, user)
        members.append(Members(emu, guild.channel("general"), crowd))
    data = bot_config_data(
        emu, tmp_path / "data", tiny_model_dir,
        storage={"url": url},
        worker={"embedded": False, "max_batch": MAX_BATCH, "lease_s": 3.0},
        limits={"max_queued_per_user": 20},
        credits={"start_balance": 10_000},
    )  # fmt: skip
    data["models"] = [
        {"name": "tiny", "path": str(tiny_model_dir)},
        {"name": "other", "path": str(tiny_model_dir)},
    ]
    workers = {name: WorkerProcess(tmp_path, data, model, name) for name, model in
               (("w1", "tiny"), ("w2", "tiny"), ("w3", "other"), ("late", "tiny"))}  # fmt: skip
    db = Database(url)
    queue = JobQueue(db)
    try:
        async with running_bot(emu, build_config(data, env={})) as env:
            for name in ("w1", "w2", "w3"):
                workers[name].start()

            async def live() -> Counter:
                return Counter(w.model for w in await queue.workers() if w.kind == "remote")

            await until(
                lambda: _eq(live(), {"tiny": 2, "other": 1}), "three workers to register", timeout=180
            )
            # the servers wait until every request is in, so the claims show the fair order alone
            for guild in guilds:
                await queue.pause(guild.id)
            for i in range(20):
                for crowd in members:
                    user = crowd.users[i % len(crowd.users)]
                    model = "other" if i % 10 == 0 else None  # six jobs for the other model
                    assert await crowd.imagine(user, **({"model": model} if model else {})) is not None, (
                        crowd.refused
                    )
            accepted = {job_id: user for crowd in members for job_id, user in crowd.accepted.items()}
            assert len(accepted) == 60
            report = await status(build_config(data, env={}))
            assert "model tiny" in report and "model other" in report and "20 / 0" in report
            for guild in guilds[:2]:
                await queue.resume(guild.id)
            # kill -9 w1 while it holds a batch
            holding = await until(lambda: _running_on(queue, "w1", workers), "w1 to run a batch", timeout=120)
            workers["w1"].signal(signal.SIGKILL)
            assert await workers["w1"].exited() == -signal.SIGKILL
            workers["late"].start()  # a worker started late joins: the third server waits for it
            await until(
                lambda: _registered(queue, workers["late"]), "the late worker to register", timeout=180
            )
            await queue.resume(guilds[2].id)

            async def all_answered() -> bool:
                jobs = await queue.list(statuses=None, limit=1000)
                return len(jobs) == 60 and all(j.answered_at is not None for j in jobs)

            await until(all_answered, "every job answered", timeout=300)
            workers["w2"].signal(signal.SIGTERM)  # graceful drain: it leaves the registry
            assert await workers["w2"].exited() == 0
            jobs = await queue.list(statuses=None, limit=1000)
            merged = Members(emu, None, people, accepted=accepted)
            result = await audit(emu, url, merged)
            assert result["problems"] == [] and result["statuses"] == {"done": 60}, result
            assert await env.services.ledger.check_invariant() == []
            by_worker = {
                name: [j for j in jobs if f"-{workers[name].proc.pid}-" in j.result["worker"]]
                for name in workers
            }
            # a worker serving one model never takes a job for another
            assert {j.model for j in by_worker["w3"]} == {"other"} and len(by_worker["w3"]) == 6
            assert all(j.model == "tiny" for name in ("w1", "w2", "late") for j in by_worker[name])
            # the killed worker's batch finished on another worker; the late worker took work
            for job_id in holding:
                job = next(j for j in jobs if j.id == job_id)
                assert (
                    job.status == "done"
                    and job.attempts == 2
                    and f"-{workers['w1'].proc.pid}-" not in job.result["worker"]
                )
            assert by_worker["late"], "the late worker took no job"
            # fair order across servers: while both first servers had work, neither got ahead by more than a
            # couple of batches (one member's burst of 18 against three members' 18)
            tiny = sorted(
                (j for j in jobs if j.model == "tiny" and j.guild_id != guilds[2].id),
                key=lambda j: (j.started_at, j.id),
            )
            counts = Counter()
            for job in tiny[: len(tiny) // 2]:
                counts[job.guild_id] += 1
                assert abs(counts[guilds[0].id] - counts[guilds[1].id]) <= 3 * MAX_BATCH, [
                    j.guild_id for j in tiny
                ]
    finally:
        for w in workers.values():
            w.signal(signal.SIGKILL)
        await db.close()
        await drop_pg_database(url)


async def _eq(counter, expected) -> bool:
    return dict(await counter) == expected


async def _registered(queue: JobQueue, worker: WorkerProcess) -> bool:
    return any(f"-{worker.proc.pid}-" in w.id for w in await queue.workers())


async def _running_on(queue: JobQueue, name: str, workers: dict) -> list[int] | None:
    pid = workers[name].proc.pid
    running = [
        j.id for j in await queue.list(statuses=["running"]) if j.worker_id and f"-{pid}-" in j.worker_id
    ]
    return running or None
