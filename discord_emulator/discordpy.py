"""Pointing an unmodified discord.py at the emulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg/"


def configure_discord_py(api_base: str, gateway_url: str) -> tuple[str, str]:
    """Make every discord.py client of this process talk to ``api_base`` / ``gateway_url``.

    Sets ``discord.http.Route.BASE`` (read whenever a route is built, webhooks and interaction
    callbacks included) and ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``. Call it before the
    client logs in. Returns the previous ``(api_base, gateway_url)`` so they can be restored.
    """
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    previous = (Route.BASE, str(DiscordWebSocket.DEFAULT_GATEWAY))
    Route.BASE = api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    return previous


def reset_discord_py() -> None:
    """Point discord.py back at the real Discord."""
    configure_discord_py(DISCORD_API_BASE, DISCORD_GATEWAY)


@contextlib.asynccontextmanager
async def run_discord_client(client: Any, emulator: Any, timeout: float = 10.0) -> AsyncIterator[Any]:
    """Run ``client`` (a ``discord.Client``/``commands.Bot``) against ``emulator`` until the block ends.

    Points discord.py at the emulator, starts the client, waits for ``on_ready`` (give the client a small
    ``guild_ready_timeout``, e.g. 0.05, or this takes 2 s), yields it, then closes it::

        async with run_discord_client(bot, emu):
            it = await emu.invoke(emu.user("alice"), emu.channel("general"), "imagine", {"prompt": "a cat"})
    """
    configure_discord_py(emulator.api_base, emulator.gateway_url)
    task = asyncio.create_task(client.start(emulator.bot_token), name="discord-client")
    ready = asyncio.create_task(client.wait_until_ready())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the login/connection error
            raise RuntimeError("the discord.py client stopped before it was ready")
        if ready not in done:
            raise TimeoutError(f"the discord.py client was not ready within {timeout}s")
        yield client
    finally:
        ready.cancel()
        if not client.is_closed():
            await client.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 5)
