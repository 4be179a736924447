"""`python bot.py --sandbox`: the real bot against the local Discord emulator.

No Discord account and no download: the emulator plays Discord (a server with channels, members
with and without Manage Server, DMs), the tiny model is built on first use, SQLite lives in
data/sandbox.  ``terminal`` drives it from stdin, for scripting.
"""

from .session import Sandbox, running_sandbox
from .terminal import run_terminal

__all__ = ["Sandbox", "run_terminal", "running_sandbox"]
