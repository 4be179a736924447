"""Fixtures that run the real bot from bot.py against the Discord emulator, and readers of what it posted.

`bot_env`: a started emulator plus the real `DiffusionBot` (real cogs, SQLite in tmp_path, the
tiny model), with small timings so tests are fast (see `emulated_bot`).  `bot_env.restart()` stops
the bot and starts a new instance on the same database — what a process restart looks like to
Discord and SQL.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from discord_emulator import Emulator
from emulated_bot import BotEnv, bot_config, is_result, result_job_id, running_bot
from gen_core.metadata import parse_parameters, read_png_parameters

__all__ = ["BotEnv", "bot_config", "is_result", "result_job_id", "running_bot"]  # re-exported for the tests


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


async def answer(it):
    """The bot's ephemeral answer to an interaction: its response, or for a button acknowledged by a
    deferred update (type 6, whose original is the button's own message) its first follow-up."""
    if await it.wait_acked(5) == 6:
        return await it.wait_followup(5)
    return await it.original(5)


async def followup_refusal(it) -> str:
    """The text of the first embed in the interaction's follow-ups (a refusal sent after the ack)."""
    await it.wait_acked(3.0)
    for _ in range(100):
        texts = [e.get("description", "") for f in it.followups for e in (f.embeds or [])]
        if texts:
            return texts[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no refusal")


@pytest.fixture
async def bot_env(emulator: Emulator, tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[BotEnv]:
    async with running_bot(emulator, bot_config(emulator, tmp_path / "data", tiny_model_dir)) as env:
        yield env
