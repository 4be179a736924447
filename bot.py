"""Entry point: `python bot.py [--config PATH] [--sandbox [--port N] [--no-browser] [--terminal]] [migrate]`.

Reads `config.toml` (+ environment overrides), builds the bot, upgrades the database, loads
every cog in `cogs/`, starts the GPU worker and syncs the slash commands.  `--sandbox` runs the
same bot against the local Discord emulator with the toy-world model and no Discord account, shown in a
local web page (see the `sandbox` package).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pkgutil
import signal
import sys
from pathlib import Path
from typing import Any

import discord
from discord.ext import commands

import cogs
from gen_core.safety import SafetyCheckerError
from services.app import Services
from services.config import Config, ConfigError, load_config
from services.ui import CommandTree
from storage import masked_url

log = logging.getLogger("bot")

NO_TOKEN = (
    "No Discord bot token. Create an application at https://discord.com/developers/applications, add a bot, "
    "copy its token into config.toml ([discord] token) or the DISCORD_TOKEN environment variable - "
    "or try everything locally with `python bot.py --sandbox`."
)


class DiffusionBot(commands.Bot):
    """The bot: discord.py client + the services (storage, queue, worker) it drives."""

    def __init__(self, config: Config, engine_loader: Any = None) -> None:
        intents = discord.Intents.default()  # reactions, guilds, members' permissions via interactions
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            guild_ready_timeout=config.discord.guild_ready_timeout,
            help_command=None,
            tree_cls=CommandTree,  # every command acknowledged, admitted, and its errors answered in one place
        )
        self.config = config
        self.services = Services(self, config, engine_loader=engine_loader)

    async def setup_hook(self) -> None:
        await self.services.start()
        for module in pkgutil.iter_modules(cogs.__path__):
            if not module.name.startswith("_"):
                await self.load_extension(f"cogs.{module.name}")
        guild_id = self.config.discord.sync_guild
        if guild_id:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d commands %s", len(synced), f"to guild {guild_id}" if guild_id else "globally")

    async def on_ready(self) -> None:
        log.info("logged in as %s in %d guild(s)", self.user, len(self.guilds))
        await self.services.announcer.announce_due()  # what a dead process left unsaid, now the gateway is back

    async def close(self) -> None:
        await self.services.stop()
        await super().close()


def point_at(config: Config) -> None:
    """Point discord.py at the configured API/gateway (an emulator or the real Discord)."""
    if config.discord.api_base or config.discord.gateway_url:
        from discord_emulator import configure_discord_py

        configure_discord_py(config.discord.api_base or None, config.discord.gateway_url or None)


async def run_bot(config: Config) -> None:
    point_at(config)
    bot = DiffusionBot(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
        except NotImplementedError:  # pragma: no cover - Windows
            pass
    async with bot:
        await bot.start(config.discord.token)


async def migrate(config: Config) -> None:
    from storage import Database

    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url)
    await db.upgrade()
    log.info("database at %s is at revision %s", masked_url(config.database_url), await db.current_revision())
    await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Self-hosted Stable Diffusion bot for Discord.")
    parser.add_argument("command", nargs="?", choices=["run", "migrate"], default="run")
    parser.add_argument("--config", default="config.toml", help="path to the TOML configuration (default: config.toml)")
    parser.add_argument("--sandbox", action="store_true", help="run against a local Discord emulator with the toy-world model, in a web page")
    parser.add_argument("--port", type=int, default=0, help="sandbox: the page's port on 127.0.0.1 (default 0: any free one)")
    parser.add_argument("--no-browser", action="store_true", help="sandbox: only print the page's URL, never open a browser")
    parser.add_argument("--terminal", action="store_true", help="sandbox: read commands from stdin instead of serving a page")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        asyncio.run(migrate(config))
        return 0
    if not args.sandbox and not config.discord.token:
        print(NO_TOKEN, file=sys.stderr)
        return 2
    try:
        if args.sandbox:
            import sandbox

            if args.terminal:
                asyncio.run(sandbox.run_terminal(config))
            else:
                asyncio.run(sandbox.run_page(config, port=args.port, open_browser=not args.no_browser))
        else:
            asyncio.run(run_bot(config))
    except SafetyCheckerError as exc:
        print(f"image check error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
