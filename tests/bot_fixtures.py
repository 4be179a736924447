"""Fixtures that run the real bot from bot.py against the Discord emulator.

`bot_env`: a started emulator plus the real `DiffusionBot` (real cogs, SQLite in tmp_path, the
tiny model), with small timings so tests are fast.  `bot_env.restart()` stops the bot and starts
a new instance on the same database — what a process restart looks like to Discord and SQL.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot import DiffusionBot, point_at
from discord_emulator import Emulator
from gen_core.metadata import parse_parameters, read_png_parameters
from services.config import Config, build_config


def bot_config(emu: Emulator, data_dir: Path, model_dir: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, dict[str, Any]] = {
        "discord": {"api_base": emu.api_base, "gateway_url": emu.gateway_url, "token": emu.bot_token, "guild_ready_timeout": 0.05},
        "model": {"path": str(model_dir)},
        "storage": {"data_dir": str(data_dir)},
        "worker": {"progress_interval_s": 0.05, "poll_interval_s": 0.05, "preview_every": 1},
        "generation": {"default_steps": 3, "default_aspect": "256x256", "max_area": 256 * 384},
        # plumbing tests screen nothing; tests/test_bot_safety.py runs the real checker and a stand-in
        "moderation": {"image_check": "false"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return build_config(data, env={})


async def attachment_pixels(emu: Emulator, attachment: Any) -> np.ndarray:
    """The RGB pixels of an image the bot attached."""
    return np.asarray(Image.open(io.BytesIO(await emu.read_attachment(attachment))).convert("RGB"))


async def attachment_image(emu: Emulator, attachment: Any) -> tuple[np.ndarray, dict]:
    """The RGB pixels of an attached PNG and its A1111 parameters."""
    data = await emu.read_attachment(attachment)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), parse_parameters(read_png_parameters(data))


def png(image: Image.Image) -> bytes:
    """``image`` encoded as PNG bytes (for ``emu.upload``)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def is_result(message) -> bool:
    """Whether ``message`` is a job's public result post (its first attachment is ``job...``)."""
    return not message.ephemeral and bool(message.attachments) and message.attachments[0].filename.startswith("job")


async def followup_refusal(it) -> str:
    """The text of the first embed in the interaction's follow-ups (a refusal sent after the ack)."""
    await it.wait_acked(3.0)
    for _ in range(100):
        texts = [e.get("description", "") for f in it.followups for e in (f.embeds or [])]
        if texts:
            return texts[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no refusal")


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


@pytest.fixture
async def bot_env(emulator: Emulator, tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[BotEnv]:
    async with running_bot(emulator, bot_config(emulator, tmp_path / "data", tiny_model_dir)) as env:
        yield env
