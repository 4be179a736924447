"""The real bot (bot.py, every cog, SQLite, a model) against the in-process Discord emulator: what the
tests and the end-to-end benchmarks drive.

``bot_config(emu, data_dir, model_dir, **sections)`` points a configuration at the emulator with small
timings; ``BotEnv`` starts, stops, crashes and restarts the bot on it; ``running_bot`` is the
context manager for one block, after which the books must balance. ``BotProcess`` runs the same bot
as a child process (``python bot.py --config …``) that a test or a benchmark can really ``kill -9``;
``WorkerProcess`` a GPU worker (``python -m worker --config …``) beside it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot import DiffusionBot, point_at
from discord_emulator import Emulator
from services.config import Config, build_config

ROOT = Path(__file__).resolve().parent


def bot_config(emu: Emulator, data_dir: Path, model_dir: Path, **sections: dict[str, Any]) -> Config:
    return build_config(bot_config_data(emu, data_dir, model_dir, **sections), env={})


def bot_config_data(
    emu: Emulator, data_dir: Path, model_dir: Path, **sections: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The sections of ``bot_config`` as plain data (for a config.toml)."""
    data: dict[str, dict[str, Any]] = {
        "discord": {
            "api_base": emu.api_base,
            "gateway_url": emu.gateway_url,
            "token": emu.bot_token,
            "guild_ready_timeout": 0.05,
        },
        "model": {"path": str(model_dir)},
        "storage": {"data_dir": str(data_dir)},
        "worker": {"progress_interval_s": 0.05, "poll_interval_s": 0.05, "preview_every": 1},
        "generation": {"default_steps": 3, "default_aspect": "256x256", "max_area": 256 * 384},
        # plumbing runs screen nothing; tests/test_bot_safety.py runs the real checker and a stand-in
        "moderation": {"image_check": "false"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def is_result(message: Any) -> bool:
    """Whether ``message`` is a job's public result post (its first attachment is ``job...``)."""
    return not message.ephemeral and bool(message.attachments) and message.attachments[0].filename.startswith("job")


def result_job_id(message: Any) -> int:
    """The job a result message names (its text says "job #<id>")."""
    return int(message.content.split("job #")[1].split()[0])


def toml_text(data: dict[str, Any]) -> str:
    """``data`` (sections of strings, numbers and booleans, or lists of such tables: ``[[models]]``) as TOML."""
    lines = []
    for section, values in data.items():
        for table in values if isinstance(values, list) else [values]:
            lines.append(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            lines += [f"{json.dumps(str(key))} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


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


# The bot's imports (torch, diffusers, transformers, discord.py) take most of a start on a busy machine; the
# zygote pays them once and forks each bot process from there: a real, separate process started in seconds.
_ZYGOTE = """
import os, signal, sys
import diffusers, transformers, torch  # noqa: F401
import bot
from gen_core import engine  # noqa: F401
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped at once: their pid is gone
print("ready", flush=True)
for line in sys.stdin:
    folder, config, log = line.rstrip("\\n").split("\\t")
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(0)
        os.chdir(folder)
        os._exit(bot.main(["--config", config, "--log-level", "INFO"]) or 0)
    print(pid, flush=True)
"""
_zygote: subprocess.Popen | None = None


def _fork_bot(folder: Path, config: Path, log: Path) -> int:
    """A new bot process forked from the zygote (started on first use); its pid."""
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        _zygote = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(_zygote.kill)
        if _zygote.stdout.readline().strip() != "ready":
            raise RuntimeError("the bot zygote did not start")
    _zygote.stdin.write(f"{folder}\t{config}\t{log}\n")
    _zygote.stdin.flush()
    return int(_zygote.stdout.readline())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class BotProcess:
    """The real bot (``bot.main``) as a separate process on ``data``'s configuration: started, and killed with
    SIGKILL like a crash, an OOM or a pulled plug; its output goes to ``log_path``."""

    def __init__(self, emu: Emulator, data: dict[str, dict[str, Any]], folder: Path) -> None:
        self.emu = emu
        self.folder = folder
        self.config_path = folder / "config.toml"
        self.config_path.write_text(toml_text(data))
        self.log_path = folder / "bot.log"
        self.pid: int | None = None
        self.starts = 0

    async def start(self, timeout: float = 120.0) -> None:
        """Start the bot and wait until it has logged in to the gateway."""
        logins = len(self.emu.events_of("gateway.identify"))
        with open(self.log_path, "a") as log:
            log.write(f"--- start {self.starts + 1}\n")
        self.pid = pid = _fork_bot(self.folder, self.config_path, self.log_path)
        self.starts += 1

        def up() -> bool | None:
            if not _alive(pid):
                raise RuntimeError(f"the bot exited; see {self.log_path}")
            return len(self.emu.events_of("gateway.identify")) > logins or None

        await self.emu.wait_until(up, timeout, "the bot process to log in")

    def kill(self) -> None:
        """SIGKILL, right now (callable from an emulator request hook): no goodbye of any kind."""
        if self.pid is not None and _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)

    async def wait_dead(self) -> None:
        while self.pid is not None and _alive(self.pid):
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Kill if running, and wait until the process is gone."""
        self.kill()
        await self.wait_dead()


class WorkerProcess:
    """``python -m worker --config …`` serving ``model``, its output in ``<name>.log``."""

    def __init__(self, folder: Path, data: dict, model: str, name: str) -> None:
        self.config = folder / f"{name}.toml"
        self.config.write_text(toml_text({**data, "worker": {**data["worker"], "model": model}}))
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    async def exited(self, timeout: float = 60.0) -> int:
        """Its exit status, once it has exited."""
        for _ in range(int(timeout / 0.05)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        raise TimeoutError(f"worker {self.config.stem} did not exit in {timeout:g} s")
