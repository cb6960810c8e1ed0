"""The update inbox: raw Telegram updates stored before they are confirmed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from storage.db import Database, Transaction
from storage.sql import marks

# Telegram keeps unconfirmed updates for 24 h; a done row older than twice that
# can no longer come back, so it is only dead weight.
DONE_KEPT_SECONDS = 48 * 3600
# Unreadable updates are kept for an admin to look at (/outbox, /healthz), then go:
# they hold a person's data like any raw update.
UNREADABLE_KEPT_SECONDS = 14 * 24 * 3600


@dataclass(frozen=True, slots=True)
class StoredUpdate:
    update_id: int
    raw: dict[str, Any]
    attempts: int


async def store_batch(db: Database, batch: list[tuple[int, str, str]]) -> set[int]:
    """Store (update_id, kind, raw_json) rows in one transaction.

    Returns the ids that were already done: a redelivered batch skips them.
    """
    if not batch:
        return set()
    async with db.transaction() as tx:
        return await _store(tx, batch, time.time())


async def _store(tx: Transaction, batch: list[tuple[int, str, str]], now: float) -> set[int]:
    stored = await tx.executemany(
        "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(uid, kind, raw, now) for uid, kind, raw in batch],
    )
    if stored == len(batch):
        return set()  # all new: the usual case, one statement
    # A redelivery: which of those stored before are done? (Ours are `new`.)
    ids = [u[0] for u in batch]
    done = await tx.fetchall(
        f"SELECT update_id FROM updates WHERE state = 'done' AND update_id IN ({marks(len(ids))})",
        ids,
    )
    return {int(r[0]) for r in done}


async def store_handled_in(
    tx: Transaction, batch: list[tuple[int, str, str]], failed: set[int], now: float
) -> set[int]:
    """Store (update_id, kind, raw_json) rows whose handlers already ran, in the
    transaction that writes what they returned: done, or `new` for the `failed`
    ids (the caller records their failure next, as for a stored update).

    Returns the ids that were stored before, in any state: the caller drops
    their results (a done one was handled; a new or failed one belongs to the
    retry pass)."""
    if not batch:
        return set()
    stored = await tx.executemany(
        "INSERT INTO updates (update_id, kind, raw, state, received_at, done_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (uid, kind, raw, "new", now, None)
            if uid in failed
            else (uid, kind, raw, "done", now, now)
            for uid, kind, raw in batch
        ],
    )
    if stored == len(batch):
        return set()  # all new: the usual case, one statement
    # Rows this call stored carry its `now`; the others were there before.
    ids = [u[0] for u in batch]
    before = await tx.fetchall(
        f"SELECT update_id FROM updates WHERE update_id IN ({marks(len(ids))})"
        " AND received_at != ?",
        [*ids, now],
    )
    return {int(r[0]) for r in before}


@dataclass(frozen=True, slots=True)
class UnreadableSummary:
    count: int
    # The latest one: (update_id, kind, error), or None when there are none.
    latest: tuple[int, str, str] | None


async def store_unreadable_in(
    tx: Transaction, rows: list[tuple[int, str, str, str]], now: float
) -> set[int]:
    """Store (update_id, kind, raw_json, error) rows as unreadable: kept, never
    handled. Returns the ids that were new (a redelivery was stored before)."""
    if not rows:
        return set()
    ids = [row[0] for row in rows]
    before = {
        int(r[0])
        for r in await tx.fetchall(
            f"SELECT update_id FROM updates WHERE update_id IN ({marks(len(ids))})", ids
        )
    }
    await tx.executemany(
        "INSERT INTO updates (update_id, kind, raw, state, last_error, received_at)"
        " VALUES (?, ?, ?, 'unreadable', ?, ?) ON CONFLICT DO NOTHING",
        [(uid, kind, raw, error[:500], now) for uid, kind, raw, error in rows],
    )
    return {uid for uid in ids if uid not in before}


async def mark_unreadable(db: Database, update_id: int, error: str) -> None:
    """A stored update that can no longer be read (read again at a retry or a start)."""
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE updates SET state = 'unreadable', last_error = ?, next_retry_at = NULL"
            " WHERE update_id = ?",
            (error[:500], update_id),
        )


async def unreadable_summary(db: Database) -> UnreadableSummary:
    rows = await db.fetchall(
        "SELECT update_id, kind, last_error, count(*) OVER () FROM updates"
        " WHERE state = 'unreadable' ORDER BY received_at DESC, update_id DESC LIMIT 1"
    )
    if not rows:
        return UnreadableSummary(0, None)
    row = rows[0]
    return UnreadableSummary(int(row[3]), (int(row[0]), str(row[1]), str(row[2] or "")))


async def mark_done(db: Database, update_ids: list[int]) -> None:
    async with db.transaction() as tx:
        await mark_done_in(tx, update_ids)


async def mark_done_in(tx: Transaction, update_ids: list[int]) -> None:
    """Mark updates handled, inside the transaction that wrote their effects."""
    if update_ids:
        now = time.time()
        await tx.executemany(
            "UPDATE updates SET state = 'done', done_at = ?, last_error = NULL,"
            " next_retry_at = NULL WHERE update_id = ?",
            [(now, uid) for uid in update_ids],
        )


async def still_stored_in(tx: Transaction, update_ids: list[int]) -> set[int]:
    """Which of `update_ids` are still in the inbox: a forget deletes a person's
    updates, and what a handler made of one since must not be written back."""
    if not update_ids:
        return set()
    rows = await tx.fetchall(
        f"SELECT update_id FROM updates WHERE update_id IN ({marks(len(update_ids))})", update_ids
    )
    return {int(r[0]) for r in rows}


async def mark_failed(db: Database, update_id: int, *, error: str, retry_at: float) -> int:
    """Count a failed handling; returns the attempts so far."""
    async with db.transaction() as tx:
        row = await tx.fetchone(
            "UPDATE updates SET state = 'failed', attempts = attempts + 1, last_error = ?,"
            " next_retry_at = ? WHERE update_id = ? RETURNING attempts",
            (error[:500], retry_at, update_id),
        )
    return int(row[0]) if row else 0


async def due_for_retry(
    db: Database, *, now: float, new_before: float, limit: int = 100
) -> list[StoredUpdate]:
    """Failed updates whose retry time came, and `new` ones stored before
    `new_before` (left unhandled by a crash, or by a handling pass that died)."""
    rows = await db.fetchall(
        "SELECT update_id, raw, attempts FROM updates"
        " WHERE (state = 'failed' AND next_retry_at <= ?) OR (state = 'new' AND received_at < ?)"
        " ORDER BY update_id LIMIT ?",
        (now, new_before, limit),
    )
    return [StoredUpdate(int(r[0]), json.loads(r[1]), int(r[2])) for r in rows]


async def failed_count(db: Database) -> int:
    row = await db.fetchone("SELECT count(*) FROM updates WHERE state = 'failed'")
    return int(row[0]) if row else 0


async def prune_old(db: Database, *, now: float | None = None) -> int:
    """Forget handled updates past DONE_KEPT_SECONDS and unreadable ones past
    UNREADABLE_KEPT_SECONDS; returns how many went."""
    now = time.time() if now is None else now
    async with db.transaction() as tx:
        done = await tx.execute(
            "DELETE FROM updates WHERE state = 'done' AND done_at < ?", (now - DONE_KEPT_SECONDS,)
        )
        unreadable = await tx.execute(
            "DELETE FROM updates WHERE state = 'unreadable' AND received_at < ?",
            (now - UNREADABLE_KEPT_SECONDS,),
        )
        return done + unreadable
