"""The shared engine: PostgreSQL through psycopg 3's async API.

Shaped like storage/sqlite.py: one writer connection, its transactions one at a
time under an asyncio lock, and reader connections of their own for `read()`.
Statements are written in SQLite's flavour and translated once per text
(storage/dialect.py).

`transaction()` gives what SQLite's BEGIN IMMEDIATE gives our read-then-write
code: nobody else writes between its first statement and its COMMIT. Within
this process the lock sees to that; across processes sharing the database, a
transaction-level advisory lock (WRITE_LOCK), taken first in the same round trip
as BEGIN. READ COMMITTED, so each statement after that lock sees every commit
made before it was granted. A single `execute` outside a transaction takes the
same lock (BEGIN, lock, statement, COMMIT), as SQLite's autocommit write would.

Notifications: `notify` inside a transaction is sent as NOTIFY in the same round
trip as its COMMIT (the server delivers it at commit, and never after a
rollback), so queueing an outbox row costs no extra round trip. `listen` keeps a
connection of its own in LISTEN: notifications are read only while a connection
waits on its socket, which the writer, busy with transactions, does not.

Ids: the migrations' INTEGER PRIMARY KEY becomes an identity column BY DEFAULT,
so a row inserted with an explicit id keeps it, but the column's sequence does
not move past it: a later row without an id could be handed that id again and
fail on the primary key. Our code never gives an id to a numbered table (only
to tables keyed by Telegram's ids, which never take a generated one); a tool or
test that does calls `advance_identities` afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, overload

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.rows import RowMaker
from psycopg.types.numeric import Int8Dumper

from storage.db import Params, Retry, Row, Transaction, check_channel
from storage.dialect import POSTGRES, Dialect

log = logging.getLogger(__name__)

# Reader connections kept open between reads: /stats runs three at once.
IDLE_READERS = 3

# The advisory lock every writing transaction holds until it ends: any 64-bit
# number no other lock of ours uses ("JB write" in ASCII).
WRITE_LOCK = 0x4A42_2077_7269_7465

_BEGIN_WRITE = f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

# The listener's connection sits idle for hours: TCP keepalives turn a dead server
# or network path into an error within a minute or so, which `listen` answers by
# reconnecting (libpq ignores them on a unix socket, where a dead server closes it).
_LISTENER_OPTIONS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# What a broken or refused listener connection raises.
_CONNECTION_ERRORS = (psycopg.Error, OSError)


class PgRow:
    """A result row read by position or by column name, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = tuple(values)

    @overload
    def __getitem__(self, key: int | str, /) -> Any: ...

    @overload
    def __getitem__(self, key: slice, /) -> tuple[Any, ...]: ...

    def __getitem__(self, key: int | str | slice, /) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: psycopg.AsyncCursor[Any]) -> RowMaker[PgRow]:
    columns = cursor.description or []
    # The first of two columns of one name wins, as in sqlite3.Row.
    index: dict[str, int] = {}
    for position, column in enumerate(columns):
        index.setdefault(column.name, position)

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(index, values)

    return make


class _BoolAsInteger(Int8Dumper):
    """Python's True and False as 1 and 0: our flags are INTEGER columns on both
    engines (SQLite stores a bool so), and PostgreSQL refuses a boolean there."""

    def dump(self, obj: Any) -> Buffer | None:
        return super().dump(int(obj))


_Connection = psycopg.AsyncConnection[PgRow]


async def _connect(url: str, **options: Any) -> _Connection:
    conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=_row_factory, **options
    )
    dumper: type[Dumper] = _BoolAsInteger
    conn.adapters.register_dumper(bool, dumper)
    return conn


class PostgresTransaction:
    """`storage.db.Transaction` on a psycopg connection inside a transaction."""

    dialect: Dialect = POSTGRES

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        # Channels to NOTIFY with the COMMIT (`PostgresDatabase.transaction`).
        self.notifications: set[str] = set()

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._conn.execute(POSTGRES.translate(sql), _bound(params))
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        batch = [_bound(row) for row in rows]
        if not batch:
            return 0
        async with self._conn.cursor() as cursor:
            await cursor.executemany(POSTGRES.translate(sql), batch)
            # psycopg sums the rows changed over the batch.
            return cursor.rowcount

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = await self._conn.execute(POSTGRES.translate(sql), _bound(params))
        if cursor.description is None:  # a statement without rows (no RETURNING)
            return []
        return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def notify(self, channel: str) -> None:
        """Sent with the COMMIT, in its round trip: the server delivers a
        notification at commit anyway, and repeats of one channel in one
        transaction as one. A `read()` snapshot commits nothing and sends none."""
        self.notifications.add(check_channel(channel))


def _commit(notifications: set[str]) -> str:
    # The names are plain identifiers (check_channel): written as they are.
    return "".join(f"NOTIFY {channel}; " for channel in sorted(notifications)) + "COMMIT"


def _bound(params: Params) -> Sequence[Any] | Mapping[str, Any]:
    # Never None: psycopg then leaves `%%` undoubled, and the translation doubles it.
    return params if isinstance(params, Mapping) else tuple(params)


class PostgresDatabase:
    """`storage.db.Database` on a PostgreSQL database."""

    dialect: Dialect = POSTGRES

    def __init__(self, conn: _Connection, url: str) -> None:
        self._conn = conn
        self._url = url
        self._lock = asyncio.Lock()
        self._readers: list[_Connection] = []

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        """The writer connection (no migrations: `storage.db.open_database_url`)."""
        return cls(await _connect(url), url)

    async def _writer(self) -> _Connection:
        # A connection the server dropped (a restart, a failover) is replaced at the
        # next unit of work instead of failing every one after it.
        if self._conn.closed or self._conn.broken:
            await self._conn.close()
            self._conn = await _connect(self._url)
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._lock:
            conn = await self._writer()
            await conn.execute(_BEGIN_WRITE)
            try:
                tx = PostgresTransaction(conn)
                yield tx
                await conn.execute(_commit(tx.notifications))
            except BaseException:
                # A failed COMMIT has ended the transaction already; a dropped
                # connection has nothing to roll back (the next unit reconnects).
                if _in_transaction(conn):
                    await conn.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PostgresTransaction]:
        conn = self._readers.pop() if self._readers else await _connect(self._url)
        try:
            await conn.execute(_BEGIN_READ)
            try:
                yield PostgresTransaction(conn)
            finally:
                if _in_transaction(conn):
                    await conn.execute("ROLLBACK")  # a reader has nothing to commit
        except BaseException:
            await conn.close()  # whatever went wrong stays with this connection
            raise
        if len(self._readers) < IDLE_READERS:
            self._readers.append(conn)
        else:
            await conn.close()

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        # One statement in autocommit: it sees what was committed when it began.
        async with self._lock:
            conn = await self._writer()
            return await PostgresTransaction(conn).fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def advance_identities(self) -> None:
        """Move each identity column's sequence past the largest id in its table
        (after rows were inserted with ids of their own: see the module's docstring)."""
        async with self.transaction() as tx:
            await advance_identities_in(tx)

    async def close(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            await reader.close()
        async with self._lock:
            await self._conn.close()

    async def upkeep(self, stop: asyncio.Event) -> None:
        """Nothing to do: the server runs its own chores (autovacuum, checkpoints)."""
        await stop.wait()

    async def listen(
        self, channel: str, callback: Callable[[], None], stop: asyncio.Event, *, retry: Retry
    ) -> None:
        """LISTEN on a connection of its own, calling `callback` per notification,
        until `stop`. After a failure (the server restarted, the session was ended,
        the network) it connects again after `retry.delay(failures)`, and calls
        `callback` once listening again: what was notified in between is lost."""
        check_channel(channel)
        failures = 0
        while not stop.is_set():
            conn: _Connection | None = None
            delay: float | None = None
            try:
                conn = await _connect(self._url, **_LISTENER_OPTIONS)
                await conn.execute(f"LISTEN {channel}")
                if failures:
                    log.info("listening on %s again after %d failure(s)", channel, failures)
                failures = 0
                callback()
                await _relay(conn, callback, stop)
            except _CONNECTION_ERRORS as error:
                failures += 1
                delay = retry.delay(failures)
                log.warning(
                    "listening on %s failed (%s); again in %.1f s",
                    channel,
                    _describe(error),
                    delay,
                )
            finally:
                if conn is not None:
                    await conn.close()  # before the wait: a broken session holds nothing
            if delay is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()


async def _relay(conn: _Connection, callback: Callable[[], None], stop: asyncio.Event) -> None:
    """`callback` per notification on `conn` until `stop`; a connection error passes on."""

    async def consume() -> None:
        async for _ in conn.notifies():
            callback()
        raise psycopg.OperationalError("the notifications ended")  # they never do on their own

    consumer = asyncio.ensure_future(consume())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((consumer, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # An idle connection waiting for notifications is simply abandoned by the
        # cancellation (no query runs to cancel); the caller closes it.
        consumer.cancel()
        stopped.cancel()
        await asyncio.wait((consumer, stopped))
    if not consumer.cancelled():
        consumer.result()  # the connection's error


def _describe(error: BaseException) -> str:
    # The first line only: psycopg's messages run on with hints. Never the URL.
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


async def advance_identities_in(tx: Transaction) -> None:
    """`PostgresDatabase.advance_identities` as a step of the caller's transaction."""
    rows = await tx.fetchall(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    )
    # Never below 1, a sequence's least value: channels are keyed by Telegram's chat
    # ids, which are negative (that column's sequence is never drawn on).
    for table, column in rows:
        await tx.fetchall(
            f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'),"
            f' (SELECT greatest(max("{column}"), 0) + 1 FROM "{table}"), false)'
        )


def _in_transaction(conn: _Connection) -> bool:
    return not (conn.closed or conn.broken) and (
        conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    )
