"""kill -9 the real bot process at each stage of a job's life and start it again: every accepted request gets
exactly one final answer, nothing is charged twice, and the ledger equals the balances.

The bot runs as a child process (``python bot.py``, SQLite, the tiny model) against the emulator in this
process; the emulator's request hooks kill it at exact moments (a progress edit, a posted result, a failed
post, a DM). The time from the restart to the last answer is recorded as a test property (bench/ reports it).
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import time

import pytest

from bench.crash_audit import Members, audit, image_files
from bench.crash_recovery import run_soak
from emulated_bot import BotProcess, bot_config_data

STAGES = ["queued and mid-sampling", "claimed", "images stored", "posted, not recorded", "retrying a post", "refunded, DM pending"]
FAST_RETRIES = {"announce_retries": 2, "announce_backoff_s": 0.2, "announce_backoff_max_s": 0.5}


async def until(check, what: str, timeout: float = 120.0, every: float = 0.05):
    """The first truthy value of ``check()`` (awaited if it returns an awaitable): a deadline, not a timing."""
    for _ in range(int(timeout / every)):
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("stage", STAGES)
async def test_kill_9_at_each_stage_then_every_request_is_answered_once(
    make_emulator, tmp_path, tiny_model_dir, record_property, stage
):
    emu = await make_emulator()
    data_dir = tmp_path / "data"
    config = bot_config_data(emu, data_dir, tiny_model_dir, worker=FAST_RETRIES)
    bot = BotProcess(emu, config, tmp_path)
    members = Members.create(emu, 3)
    dm = emu.dm_channel(members.users[0])
    posts = f"POST /channels/{members.channel.id}/messages"
    lock: list[sqlite3.Connection] = []
    try:
        await bot.start()

        def ready() -> bool:  # every request accepted, and a job generating now
            return len(members.accepted) == 3 and any("Generating" in m.content and not m.deleted for m in emu.messages.values())

        def kill_when(condition):
            return lambda route: condition() and (bot.kill() or True)

        if stage == "queued and mid-sampling":  # one job samples, the others wait in the queue
            emu.on_request("/messages/@original", kill_when(ready), after=True)
        elif stage == "images stored":  # the PNGs are written, the completion cannot be: SQLite is locked
            def hold(route: str) -> bool:
                if not ready():
                    return False
                conn = sqlite3.connect(data_dir / "bot.db", timeout=30, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                lock.append(conn)
                return True

            emu.on_request("/messages/@original", hold, after=True)
        elif stage == "posted, not recorded":  # a result is in the channel; the bot never hears back
            def posted() -> bool:
                return any(m.attachments for m in emu.channel_messages(members.channel))

            emu.on_request(posts, kill_when(lambda: len(members.accepted) == 3 and posted()), after=True)
        elif stage in ("retrying a post", "refunded, DM pending"):  # Discord fails every post in the channel
            emu.inject_error(posts, count=10_000, status=503)
            if stage == "retrying a post":
                tries = []
                emu.on_request(posts, kill_when(lambda: tries.append(1) or len(tries) == 2))
            else:
                emu.on_request(f"POST /channels/{dm.id}/messages", kill_when(lambda: True))
        accepted = await asyncio.gather(*(members.imagine(user, steps=12) for user in members.users))
        assert None not in accepted
        if stage == "claimed":
            await until(lambda: _running(data_dir), "a claimed job")
            bot.kill()
        elif stage == "images stored":
            await until(lambda: image_files(data_dir) > 0 and lock, "stored images")
            bot.kill()
        await bot.wait_dead()
        for conn in lock:
            conn.execute("ROLLBACK")
        restarted = time.monotonic()
        await bot.start()
        await until(lambda: _all_answered(emu, config, members), "every request to be answered", every=0.5)
        record_property("restart_to_last_answer_s", round(time.monotonic() - restarted, 2))
        report = await audit(emu, f"sqlite+aiosqlite:///{data_dir / 'bot.db'}", members)
        assert report["problems"] == [] and report["accepted"] == 3, report
        if stage in ("retrying a post", "refunded, DM pending"):
            assert report["statuses"] == {"failed": 3}  # refunded, and each told once by DM
        else:
            assert report["statuses"] == {"done": 3}
    finally:
        await bot.stop()


def _running(data_dir) -> bool:
    conn = sqlite3.connect(data_dir / "bot.db", timeout=30)
    try:
        return bool(conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0])
    finally:
        conn.close()


async def _all_answered(emu, config, members) -> bool:
    report = await audit(emu, f"sqlite+aiosqlite:///{config['storage']['data_dir']}/bot.db", members)
    return report["accepted"] == len(members.users) and report["problems"] == []


async def test_soak_with_random_kills_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):
    report = await run_soak(tiny_model_dir, n_jobs=30, n_members=6, kills=2, seed=7, folder=tmp_path)
    assert report["problems"] == [] and report["jobs"] >= report["accepted"] > 0, report
