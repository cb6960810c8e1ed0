"""`joinbridge migrate-to-postgres <url>`: move the SQLite database at
DATABASE_PATH into an empty PostgreSQL database, for an owner who outgrows one
machine. The copying is storage/transfer.py; this checks, prints and decides.

A one-way move: afterwards the bridge runs on PostgreSQL (DATABASE_URL), and
nothing copies back what it records there into the SQLite file.

Exit status: 0 copied and every table's rows counted alike on both sides;
2 refused before anything was written (a bad URL, no database, a bridge
running on it, a target that is not empty, a database from a newer release);
1 failed (the server, a row refused: the target is left empty) or counts differ.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

import psycopg

from bot.cluster.database_url import check, masked, scrub, with_connect_timeout
from storage.db import latest_version, open_database, schema_version
from storage.transfer import TableCount, TargetNotEmpty, TransferError, copy_database

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PROG = "joinbridge migrate-to-postgres"
# libpq's default is to wait for ever on a host that drops packets.
CONNECT_TIMEOUT = 10

EPILOG = (
    "This is a one-way move. The SQLite database is copied as it is now, with every"
    " id kept; afterwards set DATABASE_URL to the same URL (in .env) and start the"
    " bridge: it then runs on PostgreSQL, and the SQLite file is no longer used."
    " The target must be an empty database (createdb joinbridge), and the bridge"
    " must be stopped while the copy runs."
)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.epilog = EPILOG
    parser.add_argument("url", help="the empty PostgreSQL database: postgresql://user:pw@host/db")
    parser.add_argument(
        "--database",
        type=Path,
        default=None,
        help="the SQLite database to move (default: DATABASE_PATH from the environment or .env)",
    )


def run(args: argparse.Namespace) -> int:
    url: str = args.url
    try:
        check(url)
    except ValueError as error:
        _error(f"url: {error}")
        return EXIT_USAGE
    source: Path = args.database if args.database is not None else _database_path()
    if not source.is_file():
        _error(f"database: {source} does not exist")
        return EXIT_USAGE
    # The bridge's own import, for the bridge's own lock: held for the whole copy,
    # so no bridge can start on the file while it is read.
    from bot.app import AlreadyRunning, instance_lock
    from bot.doctor.local import running_bridge_pid

    try:
        with instance_lock(source):
            return asyncio.run(_move(source, url))
    except AlreadyRunning:
        pid = running_bridge_pid(source)
        who = f" (pid {pid})" if pid else ""
        _error(
            f"a bridge is running on {source}{who}: stop it first; a copy of a database in"
            " use would miss the joins recorded while it runs"
        )
        return EXIT_USAGE


def _database_path() -> Path:
    from bot.cli.run import load_settings  # exits 2 with a clear line when settings are bad

    return load_settings().database_path


async def _move(source: Path, url: str) -> int:
    from storage.postgres import PostgresDatabase

    print(f"moving {source} to PostgreSQL at {masked(url)} (a one-way move)", flush=True)
    try:
        sqlite_db = await open_database(source)  # at this release's schema, as a start would
    except sqlite3.Error as error:
        _error(f"database: {source} cannot be opened as SQLite: {error}")
        return EXIT_USAGE
    try:
        version = await schema_version(sqlite_db)
        if version > latest_version():
            _error(
                f"database: {source} has schema version {version}, newer than this release"
                f" knows ({latest_version()}): run migrate-to-postgres from the release that"
                " wrote it"
            )
            return EXIT_USAGE
        try:
            target = await PostgresDatabase.open(with_connect_timeout(url, CONNECT_TIMEOUT))
        except psycopg.Error as error:
            _error(f"cannot connect to {masked(url)}: {_first_line(scrub(str(error), url))}")
            return EXIT_FAILED
        try:
            counts = await copy_database(sqlite_db, target, on_table=_progress)
        except TargetNotEmpty as error:
            _error(f"{error}; give the URL of a new, empty database (createdb), nothing was copied")
            return EXIT_USAGE
        except (TransferError, psycopg.Error) as error:
            _error(f"failed, the target was left empty: {_first_line(scrub(str(error), url))}")
            return EXIT_FAILED
        finally:
            await target.close()
    finally:
        await sqlite_db.close()
    return _report(counts, url)


def _progress(table: str, rows: int) -> None:
    print(f"  copied {table}: {rows:,} rows", flush=True)


def _report(counts: list[TableCount], url: str) -> int:
    width = max([len("table"), *(len(count.table) for count in counts)])
    print(f"\n{'table':<{width}}  {'SQLite':>12}  {'PostgreSQL':>12}")
    for count in counts:
        mark = "" if count.matches else "  <- differs"
        print(f"{count.table:<{width}}  {count.source:>12,}  {count.target:>12,}{mark}")
    differ = [count.table for count in counts if not count.matches]
    if differ:
        _error(f"row counts differ in {', '.join(differ)}: do not switch to this copy")
        return EXIT_FAILED
    print(
        f"\nevery table's rows counted alike on both sides. This is a one-way move:"
        f" set DATABASE_URL={masked(url)} (with its password) in .env and start the"
        " bridge; it now runs on PostgreSQL, and the SQLite file is no longer used."
    )
    return EXIT_OK


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _error(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)
