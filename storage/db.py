"""The storage seam: what every storage function is written against.

A storage function takes a `Database` when it does its own unit of work, or a
`Transaction` when it is a step in its caller's (the `…_in` functions): the
poller writes a whole getUpdates batch's joins, outbox rows and inbox marks in
one. Both are engine-neutral protocols; `storage.sqlite` implements them on
aiosqlite, the embedded default, `storage.postgres` on psycopg for a database
several processes share (`open_database_url`). Statements are written in
SQLite's flavour with `?` or `:name` placeholders; `storage.dialect` holds what
differs between the engines, and each `Database` and `Transaction` names its
own (`dialect`).

`transaction()` is the only way to write: `BEGIN IMMEDIATE` … `COMMIT`, one
at a time, rolled back on any exception. `read()` is a consistent snapshot on
a connection of its own, for long reads (/stats over a million joins) that
must neither wait for the writer nor hold it.

`Transaction.notify` and `Database.listen` carry "rows were committed" from one
process to another (the outbox waking the leader's courier): PostgreSQL's
NOTIFY and LISTEN. On SQLite, one process owns the database and wakes its
services in-process, so notify does nothing and listen only waits.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from storage.dialect import ONLY_POSTGRES, ONLY_SQLITE, Dialect

if TYPE_CHECKING:
    from storage.sqlite import SqliteDatabase

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

# One statement's parameters: by position (`?`) or by name (`:name`).
Params = Sequence[Any] | Mapping[str, Any]


class Row(Protocol):
    """A result row, read by position or by column name (sqlite3.Row is one)."""

    @overload
    def __getitem__(self, key: int | str, /) -> Any: ...

    @overload
    def __getitem__(self, key: slice, /) -> tuple[Any, ...]: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> list[str]: ...


class Transaction(Protocol):
    """Statements inside one unit of work (or one snapshot, for `read()`)."""

    @property
    def dialect(self) -> Dialect:
        """The engine's SQL where it differs (storage/dialect.py)."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement per parameter row; the rows changed in all."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def notify(self, channel: str) -> None:
        """Tell `listen`ers on `channel`, in any process, once this transaction
        commits (nothing on rollback; several calls, one notification)."""
        ...


class Retry(Protocol):
    """How long to wait after `failures` failures in a row: bot/backoff.py's
    `Backoff` is one (storage/ imports nothing from bot/, so it is passed in)."""

    def delay(self, failures: int) -> float: ...


# A channel name is written into NOTIFY and LISTEN as it is: a plain identifier.
CHANNEL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_channel(channel: str) -> str:
    if not CHANNEL_NAME.fullmatch(channel):
        raise ValueError(f"a notification channel is a lowercase identifier: {channel!r}")
    return channel


class Database(Protocol):
    @property
    def dialect(self) -> Dialect:
        """The engine's SQL where it differs (storage/dialect.py)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """`BEGIN IMMEDIATE` … `COMMIT`, one transaction at a time; rolled back on
        any exception (and the exception passes on)."""
        ...

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """A snapshot for reading, beside the writer: it sees what was committed
        when it began, and neither waits for the writer nor holds it."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """One write statement, atomic by itself (no BEGIN/COMMIT around it), in
        turn with the transactions; the rows it changed."""
        ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """One read statement, in turn with the transactions."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def close(self) -> None: ...

    async def upkeep(self, stop: asyncio.Event) -> None:
        """The engine's own background chores (SQLite: WAL checkpoints), until `stop`."""
        ...

    async def listen(
        self, channel: str, callback: Callable[[], None], stop: asyncio.Event, *, retry: Retry
    ) -> None:
        """Call `callback` for the notifications on `channel` (`Transaction.notify`,
        from any process) until `stop`; also once each time listening (re)starts,
        since notifications sent while not listening are lost. Errors of the
        connection are logged and retried after `retry.delay(failures)`; bursts
        may be coalesced, so `callback` should only wake its owner."""
        ...


async def open_database(path: Path) -> SqliteDatabase:
    """Open (creating folders and file), set pragmas, apply pending migrations."""
    from storage.sqlite import SqliteDatabase

    return await _migrated(await SqliteDatabase.open(path))


async def open_database_url(url: str) -> Database:
    """`postgresql://…` (or `postgres://…`): PostgreSQL; `sqlite:///path` (or a bare
    path): the SQLite file there. Migrations applied, as by `open_database`."""
    if _is_postgres(url):
        from storage.postgres import PostgresDatabase

        return await _migrated(await PostgresDatabase.open(url))
    return await open_database(_sqlite_path(url))


async def open_reads_url(url: str) -> Database:
    """A second handle on the database at `url` for reads beside the bridge's own
    (no migrations): SQLite opens the file read-only."""
    if _is_postgres(url):
        from storage.postgres import PostgresDatabase

        return await PostgresDatabase.open(url)
    return await open_readonly(_sqlite_path(url))


_DB = TypeVar("_DB", bound=Database)


async def _migrated(db: _DB) -> _DB:
    try:
        await migrate(db)
    except BaseException:
        # A connection left open keeps its thread, and with it the process, alive
        # (a CLI that met "database is locked" would print the error and hang).
        await db.close()
        raise
    return db


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _sqlite_path(url: str) -> Path:
    """The file of `sqlite:///abs/path` (absolute), `sqlite://rel/path` (relative)
    or a bare path; ValueError for any other scheme."""
    if url.startswith("sqlite://"):
        return Path(url.removeprefix("sqlite://"))
    if "://" in url:
        raise ValueError(f"unknown database URL scheme: {url.split('://', 1)[0]}://")
    return Path(url)


async def open_readonly(path: Path) -> SqliteDatabase:
    """For a tool beside a running bridge: no migrations, no writes possible.

    FileNotFoundError when there is no database there yet.
    """
    from storage.sqlite import SqliteDatabase

    return await SqliteDatabase.open(path, readonly=True)


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
    async with db.transaction() as tx:
        await _create_versions_table(tx)
    current = await schema_version(db)
    for version, name, sql in _migrations():
        if version <= current:
            continue
        async with db.transaction() as tx:
            applied = await _apply(tx, version, name, sql)
        if applied:
            log.info("database migrated to version %d (%s)", version, name)
        current = version
    return current


async def migrate_in(tx: Transaction) -> int:
    """Every migration not yet applied, all in the caller's transaction; the version.

    For a database created and filled as one unit (migrate-to-postgres): if the
    filling fails, the schema goes with it and the database is as empty as before.
    """
    await _create_versions_table(tx)
    for version, name, sql in _migrations():
        await _apply(tx, version, name, sql)
    return latest_version()


async def _create_versions_table(tx: Transaction) -> None:
    await tx.execute(
        tx.dialect.ddl(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
    )


async def _apply(tx: Transaction, version: int, name: str, sql: str) -> bool:
    """One migration in `tx`, unless it is recorded already; whether it was applied."""
    # Asked under the write lock: another process starting beside this one (several
    # bridges on one PostgreSQL) may have applied it since the version was read.
    if await tx.fetchone("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)):
        return False
    # A whole script at once would COMMIT our transaction: one by one.
    for marker, statement in _split_sql(sql):
        if tx.dialect.applies(marker):
            await tx.execute(tx.dialect.ddl(statement))
    await tx.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (version, name, time.time()),
    )
    return True


async def schema_version(db: Database) -> int:
    row = await db.fetchone("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(row[0]) if row else 0


def _split_sql(script: str) -> list[tuple[str | None, str]]:
    """The statements of a migration, each with the marker line (`-- sqlite only`,
    `-- postgres only`) that came just before it, or None: for both engines."""
    statements: list[tuple[str | None, str]] = []
    buffer = ""
    marker: str | None = None
    for line in script.splitlines(keepends=True):
        stripped = line.strip()
        if not buffer and stripped.lower().startswith((ONLY_SQLITE, ONLY_POSTGRES)):
            marker = ONLY_SQLITE if stripped.lower().startswith(ONLY_SQLITE) else ONLY_POSTGRES
            continue
        if stripped.startswith("--") or not stripped:
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append((marker, buffer.strip()))
            buffer, marker = "", None
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:60]}")
    return statements
