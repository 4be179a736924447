"""`python bot.py --sandbox --terminal`: the sandbox driven from a terminal, for scripting.

Type slash commands as you would in Discord (`/imagine prompt:a cat count:2`); the bot's messages
are printed and their images saved.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

from sandbox.session import running_sandbox
from services.config import Config

log = logging.getLogger(__name__)

_OPTION = re.compile(r"(?:^|\s)([a-z_]+):")

HELP = """\
Sandbox ready — you are {user} in #{channel} of "{guild}".
Type a slash command, e.g.
  /imagine prompt:a cat in a spacesuit count:2 aspect:landscape
  /credits      /history      /cost prompt:a cat steps:40
  react N 🔄     (react to the N-th last bot message; ❌ ⭐ ✉️ work too)
  click N LABEL  (press a button of the N-th last bot message, e.g. click 1 Vary (Strong))
  quit
Images are saved to {out}.
"""


def parse_command_line(line: str, options_of=None) -> tuple[str, dict[str, Any]]:
    """`/imagine prompt:a cat count:2` → ("imagine", {"prompt": "a cat", "count": 2}).

    `options_of(name)` gives the command's option names when known, so that a colon inside a value
    (`prompts:cat:0.7 | kitten:0.3`) is not taken for another option.
    """
    line = line.strip().lstrip("/")
    matches = list(_OPTION.finditer(line))
    name = (line[: matches[0].start()] if matches else line).strip()
    known = options_of(name) if options_of else None
    if known is not None:
        matches = [m for m in matches if m.group(1) in known]
    options: dict[str, Any] = {}
    ends = [m.start() for m in matches[1:]] + [len(line)] * bool(matches)
    for m, end in zip(matches, ends, strict=True):
        options[m.group(1)] = _value(line[m.end() : end].strip())
    return name, options


def _value(raw: str) -> Any:
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if re.fullmatch(r"-?\d+\.\d*", raw):
        return float(raw)
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


async def run_terminal(config: Config, lines: Any = None) -> None:
    """Start the sandbox; read commands from `lines` (default: stdin) until EOF/quit."""
    async with running_sandbox(config) as sandbox:
        await _drive(sandbox.emu, Path(config.data_dir) / "out", lines or _stdin_lines())


async def _drive(emu: Any, out: Path, lines: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    guild = emu.guild()
    channel, user = guild.channel("general"), emu.user("alice")
    print(HELP.format(user=user.name, channel=channel.name, guild=guild.name, out=out.resolve()), flush=True)
    seen: set[int] = set()
    printer = asyncio.create_task(_print_messages(emu, channel, user, out, seen))
    try:
        async for line in lines:
            line = line.strip()
            if not line:
                continue
            if line in ("quit", "exit"):
                break
            try:
                await _do(emu, channel, user, line)
            except Exception as exc:  # a typo must not end the sandbox
                print(f"! {exc}", flush=True)
    finally:
        printer.cancel()


async def _do(emu: Any, channel: Any, user: Any, line: str) -> None:
    words = line.split()
    bot_messages = [m for m in emu.channel_messages(channel) if m.author.bot and not m.deleted]
    if words[0] in ("react", "click"):
        message = bot_messages[-int(words[1])]
        if words[0] == "react":
            await emu.add_reaction(user, message, words[2])
        else:
            label = " ".join(words[2:])
            button = next(b for b in message.buttons if label in (b.label, b.emoji))
            await emu.click(user, message, button.custom_id)
        return
    name, options = parse_command_line(line, lambda n: _option_names(emu, channel, n))
    await emu.invoke(user, channel, name, options)


def _option_names(emu: Any, channel: Any, name: str) -> set[str] | None:
    try:
        return {o["name"] for o in emu.commands.get(name, channel.guild).get("options") or []}
    except KeyError:
        return None


async def _print_messages(emu: Any, channel: Any, user: Any, out: Path, seen: set[int]) -> None:
    while True:
        for message in emu.channel_messages(channel, include_ephemeral=True):
            if message.id in seen or not message.author.bot or not message.visible_to(user) or message.loading:
                continue
            seen.add(message.id)
            print(f"\n[{'only you' if message.ephemeral else 'bot'}] {message.content or ''}", flush=True)
            for embed in message.embeds:
                fields = [f"{f.get('name')}: {f.get('value')}" for f in embed.get("fields", [])]
                print("  " + "\n  ".join(filter(None, [embed.get("title"), embed.get("description"), *fields])), flush=True)
            for att in message.attachments:
                path = out / att.filename
                path.write_bytes(await emu.read_attachment(att))
                print(f"  saved {path}", flush=True)
        await asyncio.sleep(0.3)


async def _stdin_lines():
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line
