"""`joinbridge forget <telegram-user-id>`: erase one person's joins, visits and
everything else the bridge holds about them, and say how many rows went.

Safe while the bridge runs (one short transaction on the shared database).
Exit status: 0 done (also when nothing was stored), 2 bad arguments or no
database, 1 failure.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

from bot.ops.privacy import describe, forget, parse_user_id
from storage.db import open_database
from storage.privacy import Forgotten

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _user_id(text: str) -> int:
    try:
        return parse_user_id(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "telegram_user_id", type=_user_id, help="the person's numeric Telegram user id"
    )
    parser.add_argument(
        "--database",
        type=Path,
        default=None,
        help="the database (default: DATABASE_PATH from the environment or .env)",
    )


def run(args: argparse.Namespace) -> int:
    database: Path | None = args.database
    if database is None:
        from bot.cli.run import load_settings  # exits 2 with a clear line when settings are bad

        database = load_settings().database_path
    if not database.is_file():
        print(f"joinbridge forget: database: {database} does not exist", file=sys.stderr)
        return EXIT_USAGE
    user_id: int = args.telegram_user_id
    try:
        forgotten = asyncio.run(_forget(database, user_id))
    except (sqlite3.Error, OSError) as error:
        print(f"joinbridge forget: failed, nothing was erased: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not forgotten.total:
        print(f"nothing stored about user {user_id}")
    else:
        print(f"forgot user {user_id}:")
    for line in describe(forgotten):
        print(f"  {line}")
    return EXIT_OK


async def _forget(database: Path, user_id: int) -> Forgotten:
    db = await open_database(database)
    try:
        return await forget(db, user_id)
    finally:
        await db.close()
