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

import psycopg

from bot.factory import open_store
from bot.ops.privacy import describe, forget, parse_user_id
from bot.settings import Settings
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
    settings: Settings | None = None
    if database is None:
        from bot.cli.run import load_settings  # exits 2 with a clear line when settings are bad

        settings = load_settings()
        database = settings.database_path
    on_postgres = settings is not None and settings.database_url is not None
    if not on_postgres and not database.is_file():
        print(f"joinbridge forget: database: {database} does not exist", file=sys.stderr)
        return EXIT_USAGE
    user_id: int = args.telegram_user_id
    try:
        forgotten = asyncio.run(_forget(settings, database, user_id))
    except (sqlite3.Error, psycopg.Error, OSError) as error:
        print(f"joinbridge forget: failed, nothing was erased: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not forgotten.total:
        print(f"nothing stored about user {user_id}")
    else:
        print(f"forgot user {user_id}:")
    for line in describe(forgotten):
        print(f"  {line}")
    return EXIT_OK


async def _forget(settings: Settings | None, database: Path, user_id: int) -> Forgotten:
    """On the configured store (DATABASE_URL or DATABASE_PATH), or on `--database`."""
    db = await open_store(settings) if settings is not None else await open_database(database)
    try:
        return await forget(db, user_id)
    finally:
        await db.close()
