"""``python -m storage upgrade|downgrade|current|check URL [REVISION]`` — migrations without an alembic.ini."""

from __future__ import annotations

import argparse
import asyncio
import sys

from storage.db import Database
from storage.ledger import Ledger


async def _main(args: argparse.Namespace) -> int:
    db = Database(args.url)
    try:
        if args.command == "upgrade":
            await db.upgrade(args.revision or "head")
        elif args.command == "downgrade":
            await db.downgrade(args.revision or "base")
        elif args.command == "current":
            sys.stdout.write(f"{await db.current_revision()}\n")
        elif args.command == "check":
            problems = await Ledger(db).check_invariant()
            for p in problems:
                sys.stdout.write(f"{p}\n")
            return 1 if problems else 0
        return 0
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage", description=__doc__)
    parser.add_argument("command", choices=["upgrade", "downgrade", "current", "check"])
    parser.add_argument("url", help="database URL, e.g. sqlite+aiosqlite:///data/bot.db")
    parser.add_argument("revision", nargs="?", help="target revision (upgrade: head, downgrade: base)")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
