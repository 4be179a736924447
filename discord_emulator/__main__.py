"""``python -m discord_emulator``: run the emulator alone (for a bot in another process)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from .emulator import Emulator
from .settings import EmulatorSettings

log = logging.getLogger("discord_emulator")


async def serve(settings: EmulatorSettings) -> None:
    emu = Emulator(settings)
    await emu.start()
    log.info("api_base=%s gateway_url=%s bot_token=%s", emu.api_base, emu.gateway_url, emu.bot_token)
    try:
        await asyncio.Event().wait()
    finally:
        await emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Discord emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=EmulatorSettings.bot_token)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every emulator event")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(serve(EmulatorSettings(host=args.host, port=args.port, bot_token=args.token)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
