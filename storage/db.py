"""The SQLite connection: pragmas, migrations and serialised transactions.

The bridge keeps one writer connection. aiosqlite runs it on its own thread;
the asyncio lock makes every transaction (and every read) one unit, so two tasks
never interleave statements inside each other's transaction.

Two ways to write. `transaction()` yields the aiosqlite connection: each
statement is a round trip to its thread. `write(work)` runs a plain function
over the `sqlite3.Connection` on that thread, BEGIN to COMMIT in one round trip.
A round trip is cheap alone, but it waits for the event loop to come back from
whatever it is doing (parsing a getUpdates batch takes milliseconds), and a
dozen of them per batch kept the single writer waiting most of the time
(bench/RESULTS.md). The ingest path (storing updates, writing what their
handlers returned) goes further: `write(work, inline=True)` runs on the event
loop's own thread. Storage functions that take a `sqlite3.Connection` are
meant for `write`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")


class Database:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """`BEGIN IMMEDIATE` … `COMMIT`, rolled back on any exception."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                await self._conn.commit()
            except BaseException:
                if self._conn.in_transaction:  # also after a failed COMMIT
                    await self._conn.rollback()
                raise

    async def write(self, work: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T:
        """Run `work(conn)` inside `BEGIN IMMEDIATE` … `COMMIT` on the writer's thread,
        in one round trip; rolled back if it raises. `work` must not touch the event
        loop: it may run on another thread.

        `inline=True` runs it on the event loop's thread instead, for the ingest
        path. That saves the round trip (~130 µs when the writer's thread has been
        asleep, as between lone joins) and, in a getUpdates burst, the writer's
        Python contending for the GIL with the parse: each statement gives the GIL
        up and waits to take it back (bench/RESULTS.md). The loop waits for the
        transaction meanwhile. When another process holds the write lock (a CLI
        command, a backup), the work goes to the writer's thread after all and waits
        there, never in the loop."""
        conn = self._conn
        async with self._lock:
            if inline:
                # Holding the lock means aiosqlite's thread is idle: every call made
                # under it has returned. The connection is opened with
                # check_same_thread=False for this; the lock keeps the two threads
                # from ever using it at once.
                with contextlib.suppress(_WriteLockBusy):
                    return _in_transaction(conn._conn, work, wait=False)
            # aiosqlite has no public "run this on your thread": `_execute` and `_conn`
            # are how its own methods do it (pinned in pyproject; tests/unit/storage/test_storage.py
            # fails first if a release changes them).
            result: T = await conn._execute(lambda: _in_transaction(conn._conn, work))  # type: ignore[no-untyped-call]
        return result

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for reads outside a transaction (autocommit)."""
        async with self._lock:
            yield self._conn

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self.reader() as conn:
            rows = await conn.execute_fetchall(sql, tuple(params))
        return list(rows)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    async def checkpoints(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Move the WAL into the database file from a connection of its own.

        The writer connection has auto-checkpoints off: a checkpoint (and its
        fsync) inside a commit would stall whichever request made that commit.
        A PASSIVE checkpoint here runs beside the writer without blocking it.
        """
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            while not stop.is_set():
                try:
                    await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as error:
                    log.warning("WAL checkpoint failed: %s", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=every)
        finally:
            await conn.close()


class _WriteLockBusy(Exception):
    """Another connection holds SQLite's write lock."""


def _in_transaction(
    conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], *, wait: bool = True
) -> T:
    if wait:
        conn.execute("BEGIN IMMEDIATE")
    else:
        _begin_or_busy(conn)
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full, I/O error) leaves the transaction open;
        # without the rollback every later BEGIN would fail too.
        if conn.in_transaction:
            conn.rollback()
        raise
    return result


def _begin_or_busy(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE without waiting: _WriteLockBusy if the lock is taken.

    Only BEGIN can meet the lock: once a transaction holds it (IMMEDIATE, in WAL
    mode) its statements and COMMIT do not wait for other connections."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            raise _WriteLockBusy from error
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


async def open_database(path: Path) -> Database:
    """Open (creating folders and file), set pragmas, apply pending migrations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: `write(inline=True)`, under the lock (see there).
    conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode is durable across process crashes; only an OS crash or
        # power loss can drop the last commits.
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        # Checkpoints run in Database.checkpoints(), off the writer's commit path.
        await conn.execute("PRAGMA wal_autocheckpoint = 0")
        db = Database(conn, path)
        await migrate(db)
    except BaseException:
        # aiosqlite's thread is not a daemon: left open, it keeps the process alive
        # (a CLI that met "database is locked" would print the error and hang).
        await conn.close()
        raise
    return db


async def open_readonly(path: Path) -> Database:
    """For a tool beside a running bridge: no migrations, no writes possible.

    FileNotFoundError when there is no database there yet.
    """
    conn = await aiosqlite.connect(_readonly_uri(path), uri=True, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except BaseException:
        await conn.close()  # see open_database
        raise
    return Database(conn, path)


def _readonly_uri(path: Path) -> str:
    # A file check before SQLite's own "unable to open database file" says which.
    if not path.is_file():
        raise FileNotFoundError(str(path))
    return f"{path.resolve().as_uri()}?mode=ro"


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    """The schema version this code migrates a database to."""
    return max((version for version, _, _ in _migrations()), default=0)


async def migrate(db: Database) -> int:
    """Apply every numbered migration newer than the recorded version; return it."""
    async with db.transaction() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
    current = await schema_version(db)
    for version, name, sql in _migrations():
        if version <= current:
            continue
        async with db.transaction() as conn:
            # executescript would COMMIT our transaction; run statement by statement.
            for statement in _split_sql(sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
        log.info("database migrated to version %d (%s)", version, name)
        current = version
    return current


async def schema_version(db: Database) -> int:
    row = await db.fetchone("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(row[0]) if row else 0


def _split_sql(script: str) -> list[str]:
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("--") or not stripped:
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:60]}")
    return statements
