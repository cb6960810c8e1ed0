"""The embedded engine: one SQLite file in WAL mode, through aiosqlite.

The bridge keeps one writer connection; aiosqlite runs it on a thread of its
own and each statement is a round trip to that thread (some 20-50 µs here;
bench/RESULTS.md). An asyncio lock makes each transaction one unit, so two
tasks never interleave statements inside each other's transaction. A write
that meets another process's lock (a CLI command, a backup) waits for it on
that thread, never in the event loop.

Reads that take long (/stats, /chart) go to reader connections of their own:
in WAL mode a reader neither blocks the writer nor waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from storage.db import BUSY_TIMEOUT_MS, Params, Retry, Row, check_channel
from storage.dialect import SQLITE, Dialect

log = logging.getLogger(__name__)

# Reader connections kept open between reads: /stats runs three at once.
IDLE_READERS = 3


def _bound(params: Params) -> tuple[object, ...] | Mapping[str, object]:
    return params if isinstance(params, Mapping) else tuple(params)


class SqliteTransaction:
    """`storage.db.Transaction` on an aiosqlite connection."""

    dialect: Dialect = SQLITE

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._conn.execute(sql, _bound(params))
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        batch = [_bound(row) for row in rows]
        if not batch:
            return 0
        cursor = await self._conn.executemany(sql, batch)
        return cursor.rowcount

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, _bound(params)))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._conn.execute_fetchall(sql, _bound(params))
        return next(iter(rows), None)

    async def notify(self, channel: str) -> None:
        """Nothing to send: the one process that writes this file wakes its own
        services in-process (`Courier.wake`)."""
        check_channel(channel)


class SqliteDatabase:
    """`storage.db.Database` on a SQLite file."""

    dialect: Dialect = SQLITE

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, readonly: bool) -> None:
        """Over an open connection (`open` makes one with the bridge's pragmas)."""
        conn.row_factory = sqlite3.Row
        self._conn = conn
        self._lock = asyncio.Lock()
        self._readers: list[aiosqlite.Connection] = []
        self._readonly = readonly
        self.path = path

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> SqliteDatabase:
        """The writer connection with its pragmas (no migrations: `open_database`).

        `readonly`: a tool's look beside a running bridge; FileNotFoundError when
        there is no database there yet."""
        if readonly:
            conn = await aiosqlite.connect(_readonly_uri(path), uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                await conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode is durable across process crashes; only an OS
                # crash or power loss can drop the last commits.
                await conn.execute("PRAGMA synchronous = NORMAL")
                await conn.execute("PRAGMA foreign_keys = ON")
                # Checkpoints run in upkeep(), off the writer's commit path.
                await conn.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            # aiosqlite's thread is not a daemon: left open, it keeps the process alive.
            await conn.close()
            raise
        return cls(conn, path, readonly=readonly)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTransaction(self._conn)
                await self._conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full, I/O error), which leaves the
                # transaction open: without the rollback every later BEGIN would fail.
                if self._conn.in_transaction:
                    await self._conn.rollback()
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqliteTransaction]:
        conn = self._readers.pop() if self._readers else await self._open_reader()
        try:
            await conn.execute("BEGIN")  # deferred: the snapshot starts at the first read
            try:
                yield SqliteTransaction(conn)
            finally:
                if conn.in_transaction:
                    await conn.rollback()  # a reader has nothing to commit
        except BaseException:
            await conn.close()  # whatever went wrong stays with this connection
            raise
        if len(self._readers) < IDLE_READERS:
            self._readers.append(conn)
        else:
            await conn.close()

    async def _open_reader(self) -> aiosqlite.Connection:
        if self._readonly:
            conn = await aiosqlite.connect(_readonly_uri(self.path), uri=True, isolation_level=None)
        else:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA query_only = ON")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._lock:
            cursor = await self._conn.execute(sql, _bound(params))
            return cursor.rowcount

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, _bound(params)))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            await reader.close()
        async with self._lock:
            await self._conn.close()

    async def upkeep(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """WAL checkpoints: move the WAL into the database file from a connection
        of its own, until `stop`.

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

    async def listen(
        self, channel: str, callback: Callable[[], None], stop: asyncio.Event, *, retry: Retry
    ) -> None:
        """Nobody else notifies (see `SqliteTransaction.notify`): wait for `stop`."""
        check_channel(channel)
        await stop.wait()


def _readonly_uri(path: Path) -> str:
    # A file check before SQLite's own "unable to open database file" says which.
    if not path.is_file():
        raise FileNotFoundError(str(path))
    return f"{path.resolve().as_uri()}?mode=ro"
