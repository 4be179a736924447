"""Pytest fixtures for the Discord emulator.

Import them into a test module (or from ``tests/conftest.py``)::

    pytest_plugins = ["tests.emulator_fixtures"]   # in conftest.py (this project does so)

``emulator``: a started :class:`discord_emulator.Emulator` with the default world, discord.py pointed at
it, stopped after the test. ``make_emulator(**settings)``: the same with custom
:class:`~discord_emulator.EmulatorSettings` (e.g. ``initial_response_timeout=0.2``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from discord_emulator import Emulator, EmulatorSettings, configure_discord_py
from discord_emulator.discordpy import run_discord_client

__all__ = ["emulator", "make_emulator", "run_discord_client"]


@pytest.fixture
async def make_emulator() -> AsyncIterator[Callable[..., Awaitable[Emulator]]]:
    started: list[Emulator] = []
    previous: tuple[str, str] | None = None

    async def factory(**settings: Any) -> Emulator:
        nonlocal previous
        emu = Emulator(EmulatorSettings(**settings))
        await emu.start()
        started.append(emu)
        prev = configure_discord_py(emu.api_base, emu.gateway_url)
        if previous is None:
            previous = prev
        return emu

    try:
        yield factory
    finally:
        for emu in started:
            await emu.stop()
        if previous is not None:
            configure_discord_py(*previous)


@pytest.fixture
async def emulator(make_emulator: Callable[..., Awaitable[Emulator]]) -> Emulator:
    return await make_emulator()
