"""Small durable key/value facts (the courier's pause and its reason)."""

from __future__ import annotations

import time

from storage.db import Database


async def get(db: Database, key: str) -> str | None:
    row = await db.fetchone("SELECT value FROM bridge_state WHERE key = ?", (key,))
    return str(row[0]) if row else None


async def put(db: Database, key: str, value: str | None) -> None:
    if value is None:
        await db.execute("DELETE FROM bridge_state WHERE key = ?", (key,))
    else:
        await db.execute(
            "INSERT INTO bridge_state (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (key, value, time.time()),
        )
