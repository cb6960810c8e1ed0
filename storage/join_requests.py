"""Join requests through our join-request links, and their approval."""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, Transaction


@dataclass(frozen=True, slots=True)
class NewRequest:
    chat_id: int
    user_id: int
    link_id: int | None
    link_url: str | None
    requested_at: int
    update_id: int | None
    state: str  # 'pending' (the bot approves) or 'manual' (an admin does)


@dataclass(frozen=True, slots=True)
class DueRequest:
    id: int
    chat_id: int
    user_id: int
    link_url: str | None
    attempts: int


async def insert_many(tx: Transaction, rows: list[NewRequest]) -> None:
    now = time.time()
    await tx.executemany(
        "INSERT INTO join_requests (chat_id, user_id, link_id, link_url,"
        " requested_at, update_id, state, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [
            (r.chat_id, r.user_id, r.link_id, r.link_url, r.requested_at, r.update_id, r.state, now)
            for r in rows
        ],
    )


async def request_links(
    tx: Transaction, chat_users: list[tuple[int, int]], *, approved_since: float
) -> dict[tuple[int, int], str]:
    """The link of each (chat, user)'s join request through one of our links that is
    still open ('pending': the bot approves it; 'manual': an admin does) or was
    approved since `approved_since`: the join Telegram reports next is that
    request's, even when the report carries neither the link nor via_join_request.
    The latest request wins."""
    if not chat_users:
        return {}
    pairs = sorted(set(chat_users))
    marks = ", ".join("(?, ?)" for _ in pairs)
    rows = await tx.fetchall(
        f"SELECT chat_id, user_id, link_url FROM join_requests"
        f" WHERE (chat_id, user_id) IN (VALUES {marks}) AND link_id IS NOT NULL"
        " AND (state IN ('pending', 'manual') OR (state = 'approved' AND decided_at >= ?))"
        " ORDER BY requested_at",
        [*(value for pair in pairs for value in pair), approved_since],
    )
    return {(int(r[0]), int(r[1])): str(r[2]) for r in rows}


async def due(db: Database, *, now: float, limit: int = 50) -> list[DueRequest]:
    rows = await db.fetchall(
        "SELECT id, chat_id, user_id, link_url, attempts FROM join_requests"
        " WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
        (now, limit),
    )
    return [DueRequest(int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4])) for r in rows]


async def next_due_at(db: Database) -> float | None:
    row = await db.fetchone(
        "SELECT min(next_attempt_at) FROM join_requests WHERE state = 'pending'"
    )
    return float(row[0]) if row and row[0] is not None else None


async def mark_approved(tx: Transaction, request_id: int) -> None:
    await tx.execute(
        "UPDATE join_requests SET state = 'approved', decided_at = ?, attempts = attempts + 1"
        " WHERE id = ?",
        (time.time(), request_id),
    )


async def mark_failed(db: Database, request_id: int, *, error: str, retry_at: float | None) -> None:
    """A failed approval: retried at `retry_at`, or final when it is None."""
    # Two statements rather than `CASE WHEN ? IS NULL`: PostgreSQL cannot tell the
    # type of a parameter that is only ever compared with NULL.
    if retry_at is None:
        sql = "state = 'failed', decided_at = ?"
        when: float = time.time()
    else:
        sql, when = "next_attempt_at = ?", retry_at
    async with db.transaction() as tx:
        await tx.execute(
            f"UPDATE join_requests SET attempts = attempts + 1, last_error = ?, {sql} WHERE id = ?",
            (error[:500], when, request_id),
        )
