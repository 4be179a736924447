"""Kill -9 the real bot and check the books: the audit shared by the crash tests and ``bench.crash_recovery``.

``Members`` submits /imagine requests through the emulator and remembers which were accepted (the bot
answered "queued"); ``audit`` checks, after the last restart, that every accepted request has exactly one
job and every job exactly one final answer — one result message in its channel, or one failure notice,
or one DM — with no charge twice and the ledger equal to the balances.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discord_emulator import Emulator
from storage import Database, JobQueue, Ledger

QUEUED = re.compile(r"Job #(\d+) queued")


@dataclass
class Members:
    """Members of the emulator's default guild who ask for images in one channel."""

    emu: Emulator
    channel: Any
    users: list[Any]
    accepted: dict[int, Any] = field(default_factory=dict)  # job id -> the user who asked
    refused: list[str] = field(default_factory=list)  # what the bot said to requests it turned down
    _n: int = 0

    @classmethod
    def create(cls, emu: Emulator, count: int, channel: str = "general") -> Members:
        guild = emu.guild()
        users = []
        for i in range(count):
            user = emu.add_user(f"member{i}")
            emu.add_member(guild, user)
            users.append(user)
        return cls(emu, guild.channel(channel), users)

    async def imagine(self, user: Any, steps: int = 3, **options: Any) -> int | None:
        """One /imagine; the job id once the bot said it is queued, None if it refused (too many queued jobs, no
        credits: in ``refused``) or died first."""
        self._n += 1
        it = await self.emu.invoke(user, self.channel, "imagine", {"prompt": f"a cat {self._n}", "steps": steps, **options})
        for _ in range(200):
            original = it.original_message
            match = QUEUED.search(original.content) if original is not None else None
            if match:
                self.accepted[int(match[1])] = user
                return int(match[1])
            refusals = [e.get("description", "") for f in it.followups for e in (f.embeds or [])]
            if refusals:
                self.refused.append(refusals[0])
                return None
            await asyncio.sleep(0.05)
        return None


def answers(emu: Emulator, job_id: int, user: Any) -> list[Any]:
    """Every final answer the bot gave for ``job_id``: result posts, failure notices and DMs to ``user``."""
    found = []
    for message in emu.messages.values():
        if message.author is not emu.bot_user or message.deleted or message.ephemeral:
            continue
        result = any(a.filename.startswith(f"job{job_id}_") for a in message.attachments)
        failure = f"job #{job_id} failed" in message.content
        private = message.channel.recipient is user and f"job #{job_id} " in message.content
        if result or failure or private:
            found.append(message)
    return found


async def audit(emu: Emulator, database_url: str, members: Members) -> dict[str, Any]:
    """Problems (empty when every promise held) and counts, read from the bot's database and the emulator."""
    db = Database(database_url)
    try:
        queue, ledger = JobQueue(db), Ledger(db)
        jobs = await queue.list(statuses=None, limit=100_000)
        problems = list(await ledger.check_invariant())
        by_id = {j.id: j for j in jobs}
        people = {u.id: u for u in members.users}
        problems += [f"accepted job {i} is missing" for i in members.accepted if i not in by_id]
        for job in jobs:
            user = people[job.user_id]
            said = answers(emu, job.id, user)
            if job.status in ("queued", "running"):
                problems.append(f"job {job.id} is still {job.status}")
            elif job.status == "cancelled":
                continue
            elif job.answered_at is None:
                problems.append(f"job {job.id} ({job.status}) was never answered")
            elif len(said) > 1 or (len(said) == 0 and not (job.status == "failed" and not user.dms_open)):
                problems.append(f"job {job.id} ({job.status}) has {len(said)} answers")
        statuses: dict[str, int] = {}
        for job in jobs:
            statuses[job.status] = statuses.get(job.status, 0) + 1
        return {"problems": problems, "jobs": len(jobs), "accepted": len(members.accepted), "statuses": statuses}
    finally:
        await db.close()


def image_files(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "images").rglob("*.png")) if (data_dir / "images").exists() else 0
