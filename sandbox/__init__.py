"""`python bot.py --sandbox`: the real bot against the local Discord emulator, shown in a web page.

No Discord account and no download: the emulator plays Discord (a server with channels, members
with and without Manage Server, DMs), the shipped toy-world model draws, SQLite lives in
data/sandbox.  The page (``web``) shows it like Discord's client and acts for the member you pick;
``--terminal`` drives it from stdin instead (``terminal``), for scripting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import webbrowser

from services.config import Config

from .session import Sandbox, running_sandbox
from .terminal import run_terminal
from .web import SandboxPage

log = logging.getLogger(__name__)

__all__ = ["Sandbox", "SandboxPage", "run_page", "run_terminal", "running_sandbox"]


async def run_page(config: Config, *, port: int = 0, open_browser: bool = True) -> None:
    """Start the sandbox and its page on 127.0.0.1:``port`` (0: any free one); run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_sandbox(config) as sandbox:
        page = SandboxPage(sandbox)
        url = await page.start(port=port)
        print(f"Sandbox page: {url}", flush=True)  # the sandbox's user interface: its own line, for people and scripts
        if open_browser and has_graphical_browser():
            await asyncio.to_thread(webbrowser.open, url)
        try:
            await stop.wait()
        finally:
            await page.stop()


def has_graphical_browser() -> bool:
    """A browser can be shown: a desktop session (macOS, Windows, X11 or Wayland) with a browser registered.

    Console browsers (lynx, w3m) would take over the terminal the sandbox logs to, so they don't count.
    """
    if sys.platform not in ("darwin", "win32") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True
