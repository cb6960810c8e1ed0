"""Read-only looks at a database for `joinbridge doctor`: which schema version it
carries, whether the engine finds it sound, which engine it is. Nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Database


@dataclass(frozen=True, slots=True)
class SchemaState:
    # None: no schema_migrations table (a new empty file, or not Joinbridge's).
    version: int | None
    tables: int  # user tables besides schema_migrations


async def schema_state(db: Database) -> SchemaState:
    # The engine's own bookkeeping tables (SQLite's sqlite_*) are left out.
    names = {str(row[0]) for row in await db.fetchall(db.dialect.tables)}
    if "schema_migrations" not in names:
        return SchemaState(version=None, tables=len(names))
    row = await db.fetchone("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return SchemaState(version=int(row[0]) if row else 0, tables=len(names) - 1)


async def quick_check(db: Database, limit: int = 5) -> list[str]:
    """`PRAGMA quick_check`: ["ok"] for a sound file, else up to `limit` problems.

    quick_check skips the index-content comparison of integrity_check, so it stays
    fast on a large database while still catching a damaged file.
    """
    rows = await db.fetchall(db.dialect.quick_check(limit))
    return [str(row[0]) for row in rows]


async def server_version(db: Database) -> str:
    """The engine and its version, as "PostgreSQL 15.8" or "SQLite 3.40.1"."""
    row = await db.fetchone(db.dialect.server_version)
    return str(row[0]) if row else "unknown"
