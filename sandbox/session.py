"""A running sandbox: the Discord emulator with the sandbox's world, and the real bot logged in to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot import DiffusionBot
from discord_emulator import Channel, Emulator, Guild, Overwrite, Perm, User
from discord_emulator.discordpy import run_discord_client
from services.config import Config

# The members a person can act as: plain members, one with Manage Server, one with Administrator.
MEMBERS = ("alice", "bob", "mod", "admin")
NO_FILES = "no-files"
START_TIMEOUT_S = 300.0  # a first start on a slow disk loads torch and the model


@dataclass
class Sandbox:
    emu: Emulator
    bot: DiffusionBot
    config: Config

    @property
    def guild(self) -> Guild:
        return self.emu.guild()

    def members(self) -> list[User]:
        return [self.emu.user(name) for name in MEMBERS]

    def channels(self) -> list[Channel]:
        return list(self.guild.channels)


def build_world(emu: Emulator) -> None:
    """The emulator's default world plus a channel where the bot lacks Attach Files."""
    channel = emu.add_channel(emu.guild(), NO_FILES, topic="The bot lacks Attach Files here: results can't be posted")
    channel.overwrites.append(Overwrite(emu.bot_user.id, 1, deny=int(Perm.ATTACH_FILES)))


@asynccontextmanager
async def running_sandbox(config: Config) -> AsyncIterator[Sandbox]:
    """Start the emulator and the bot on ``config`` (pointed at the emulator; data under data/sandbox)."""
    emu = Emulator()
    build_world(emu)
    await emu.start()
    config.discord.api_base, config.discord.gateway_url = emu.api_base, emu.gateway_url
    config.discord.token, config.discord.guild_ready_timeout = emu.bot_token, 0.2
    if config.storage.data_dir == "data":
        config.storage.data_dir = "data/sandbox"
    try:
        bot = DiffusionBot(config)
        async with run_discord_client(bot, emu, timeout=START_TIMEOUT_S):
            yield Sandbox(emu, bot, config)
    finally:
        await emu.stop()
