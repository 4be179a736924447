"""The real bot (bot.py, every cog, SQLite, a model) against the in-process Discord emulator: what the
tests and the end-to-end benchmarks drive.

``bot_config(emu, data_dir, model_dir, **sections)`` points a configuration at the emulator with small
timings; ``BotEnv`` starts, stops, crashes and restarts the bot on it; ``running_bot`` is the
context manager for one block, after which the books must balance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot import DiffusionBot, point_at
from discord_emulator import Emulator
from services.config import Config, build_config


def bot_config(emu: Emulator, data_dir: Path, model_dir: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, dict[str, Any]] = {
        "discord": {"api_base": emu.api_base, "gateway_url": emu.gateway_url, "token": emu.bot_token, "guild_ready_timeout": 0.05},
        "model": {"path": str(model_dir)},
        "storage": {"data_dir": str(data_dir)},
        "worker": {"progress_interval_s": 0.05, "poll_interval_s": 0.05, "preview_every": 1},
        "generation": {"default_steps": 3, "default_aspect": "256x256", "max_area": 256 * 384},
        # plumbing runs screen nothing; tests/test_bot_safety.py runs the real checker and a stand-in
        "moderation": {"image_check": "false"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return build_config(data, env={})


class BotEnv:
    def __init__(self, emu: Emulator, config: Config, engine_loader: Any = None) -> None:
        self.emu = emu
        self.config = config
        self.engine_loader = engine_loader
        self.bot: DiffusionBot | None = None
        self._task: asyncio.Task | None = None

    @property
    def services(self):
        return self.bot.services

    async def start(self) -> DiffusionBot:
        point_at(self.config)
        self.bot = DiffusionBot(self.config, engine_loader=self.engine_loader)
        self._task = asyncio.create_task(self.bot.start(self.config.discord.token))
        ready = asyncio.create_task(self.bot.wait_until_ready())
        done, _ = await asyncio.wait({ready, self._task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises the start-up error
        assert ready in done, "the bot did not become ready"
        await self.emu.wait_for_command("imagine")
        return self.bot

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self.bot = self._task = None

    async def crash(self) -> None:
        """Die like a killed process: no release of running jobs, no goodbye to Discord."""
        await self.bot.services.worker.kill()
        await self.stop()

    async def restart(self, **changes: Any) -> DiffusionBot:
        await self.stop()
        if changes.get("engine_loader") is not None:
            self.engine_loader = changes["engine_loader"]
        return await self.start()

    async def balance(self, guild: Any, user: Any) -> int:
        return await self.services.ledger.balance(guild.id, user.id)


@asynccontextmanager
async def running_bot(emu: Emulator, config: Config) -> AsyncIterator[BotEnv]:
    """The real bot on `config` for the block; the books must balance at its end."""
    env = BotEnv(emu, config)
    await env.start()
    try:
        yield env
        if env.bot is not None:
            assert await env.services.ledger.check_invariant() == []
    finally:
        await env.stop()
