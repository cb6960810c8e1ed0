"""Moving the SQLite database into an empty PostgreSQL database, as one unit
(`joinbridge migrate-to-postgres`).

Everything on the target happens in one transaction: the emptiness check, the
schema (every migration, `storage.db.migrate_in`), the rows of every table with
their ids as they are, and the identity sequences moved past those ids. A copy
that fails anywhere (a row PostgreSQL refuses, a dropped connection, Ctrl-C)
leaves the target as empty as it was, so the command can simply be run again.

Tables are copied parents first (the order their foreign keys dictate, since
PostgreSQL checks each row's references as it is inserted), each in batches of
`BATCH_ROWS` read in rowid order from one snapshot of the source: memory stays
flat whatever the size of the database, and every row is read exactly once.
schema_migrations is not copied: the target records its own migrations. Rows
that migrations seed (stay_sweep's cursor) are replaced by the source's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storage.db import Transaction, migrate_in
from storage.postgres import PostgresDatabase, advance_identities_in
from storage.sqlite import SqliteDatabase

# Rows per executemany: large enough that a round trip is spread over many rows,
# small enough that a batch of wide rows (updates' raw JSON) stays a few MB.
BATCH_ROWS = 1000
VERSIONS = "schema_migrations"


class TransferError(Exception):
    """The copy cannot be made: nothing was written to the target."""


class TargetNotEmpty(TransferError):
    def __init__(self, occupied: dict[str, int]) -> None:
        self.occupied = occupied
        tables = ", ".join(f"{name} ({rows:,} rows)" for name, rows in occupied.items())
        super().__init__(f"the target database is not empty: {tables}")


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    source: int  # rows in the SQLite database
    target: int  # rows in PostgreSQL after the copy

    @property
    def matches(self) -> bool:
        return self.source == self.target


def copy_order(references: dict[str, set[str]]) -> list[str]:
    """The tables, each after every table it references (ties by name).

    `references` maps each table to the tables its foreign keys point at."""
    ordered: list[str] = []
    placed: set[str] = set()
    remaining = dict(references)
    while remaining:
        ready = sorted(
            table
            for table, parents in remaining.items()
            if all(parent in placed or parent == table for parent in parents)
        )
        if not ready:
            raise TransferError(f"foreign keys form a cycle among: {', '.join(sorted(remaining))}")
        for table in ready:
            ordered.append(table)
            placed.add(table)
            del remaining[table]
    return ordered


async def copy_database(
    source: SqliteDatabase,
    target: PostgresDatabase,
    *,
    batch_rows: int = BATCH_ROWS,
    on_table: Callable[[str, int], None] | None = None,
) -> list[TableCount]:
    """Copy every table of `source` into `target`, which must be empty; then the
    rows each table holds on both sides, in copy order.

    TargetNotEmpty when any table of the target holds a row; TransferError when
    the schemas do not match. `on_table(table, rows)` after each table is copied.
    """
    # The source is read from one snapshot: the counts below describe exactly
    # what was copied (the caller also keeps a bridge from writing meanwhile).
    async with source.read() as snapshot:
        tables = [str(row[0]) for row in await snapshot.fetchall(snapshot.dialect.tables)]
        references: dict[str, set[str]] = {}
        for table in tables:
            if table != VERSIONS:
                rows = await snapshot.fetchall(snapshot.dialect.references, (table,))
                references[table] = {str(row[1]) for row in rows}
        order = copy_order(references)
        source_rows = {table: await _count(snapshot, table) for table in order}
        async with target.transaction() as tx:
            # Under the write lock, so a second copy (or a bridge starting on the
            # target) cannot slip in between this check and the commit.
            occupied = await occupied_tables(tx)
            if occupied:
                raise TargetNotEmpty(occupied)
            await migrate_in(tx)
            # Some migrations seed a row (stay_sweep's cursor); the source holds that
            # row too, as it stands now. Children first, for the foreign keys.
            for table in reversed(order):
                await tx.execute(f"DELETE FROM {_name(table)}")
            for table in order:
                columns = await _columns(snapshot, tx, table)
                copied = await _copy_table(snapshot, tx, table, columns, batch_rows)
                if on_table is not None:
                    on_table(table, copied)
            await advance_identities_in(tx)
    async with target.read() as after:
        return [
            TableCount(table, source_rows[table], await _count(after, table)) for table in order
        ]


async def occupied_tables(tx: Transaction) -> dict[str, int]:
    """The tables holding rows (schema_migrations too), with their row counts."""
    names = sorted(str(row[0]) for row in await tx.fetchall(tx.dialect.tables))
    counts = {name: await _count(tx, name) for name in names}
    return {name: rows for name, rows in counts.items() if rows}


async def _count(tx: Transaction, table: str) -> int:
    row = await tx.fetchone(f"SELECT count(*) FROM {_name(table)}")
    return int(row[0]) if row else 0


async def _columns(source: Transaction, target: Transaction, table: str) -> list[str]:
    """The table's columns, in the source's order; TransferError unless the target's
    table has the same ones (both are migrated to the same version first)."""
    ours = [str(row[0]) for row in await source.fetchall(source.dialect.columns, (table,))]
    theirs = {str(row[0]) for row in await target.fetchall(target.dialect.columns, (table,))}
    if not theirs:
        raise TransferError(f"table {table} does not exist in the target after its migrations")
    if set(ours) != theirs:
        differ = sorted(set(ours) ^ theirs)
        raise TransferError(f"table {table}'s columns differ between the databases: {differ}")
    return ours


async def _copy_table(
    source: Transaction, target: Transaction, table: str, columns: Sequence[str], batch_rows: int
) -> int:
    names = ", ".join(_name(column) for column in columns)
    # Keyset paging on SQLite's rowid: each batch starts where the last ended, so
    # a batch costs the same at the end of a large table as at its start.
    read = (
        f"SELECT rowid, {names} FROM {_name(table)}"
        f" WHERE rowid > ? ORDER BY rowid LIMIT {int(batch_rows)}"
    )
    write = f"INSERT INTO {_name(table)} ({names}) VALUES ({', '.join('?' for _ in columns)})"
    after = -(2**63)
    copied = 0
    while True:
        rows = await source.fetchall(read, (after,))
        if not rows:
            return copied
        await target.executemany(write, [tuple(row)[1:] for row in rows])
        copied += len(rows)
        after = rows[-1][0]


def _name(identifier: str) -> str:
    """A table or column name as a quoted identifier (names come from the catalog)."""
    return '"' + identifier.replace('"', '""') + '"'
