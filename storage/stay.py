"""The stay signal: each channel's setting, and the checks it schedules.

A check is scheduled for every attributed join recorded after the channel's
setting was turned on (`sweep`), is due `days` after the join, and ends in one
of: `sent` (still a member; the follow-up event was queued in the same
transaction), `left`, or `failed` (Telegram refused the question for good).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage import joins, outbox
from storage.db import Database, Transaction
from storage.sql import marks

DAY = 86400
STATES = ("pending", "sent", "left", "failed")


@dataclass(frozen=True, slots=True)
class StaySetting:
    chat_id: int
    days: int | None  # None: off
    event_type: str | None


@dataclass(frozen=True, slots=True)
class DueCheck:
    id: int
    join_id: int
    chat_id: int
    user_id: int
    days: int
    event_type: str
    attempts: int
    report_id: str  # the channelId AdTarget knows the channel by


async def set_setting(db: Database, chat_id: int, days: int | None, event_type: str | None) -> None:
    """Turn the stay signal on (days and event) or off (None) for joins recorded from now on.

    Joins recorded under the old setting but not swept yet are scheduled under it
    first, in the same transaction: the change must not take their checks away.
    """
    async with db.transaction() as tx:
        await _schedule_unswept(tx, now=time.time(), batch=None)
        await tx.execute(
            "UPDATE channels SET stay_signal_days = ?, stay_signal_event = ?,"
            " stay_signal_after = (SELECT coalesce(max(id), 0) FROM joins),"
            " updated_at = ? WHERE chat_id = ?",
            (days, event_type if days is not None else None, time.time(), chat_id),
        )


async def settings(db: Database, chat_ids: list[int]) -> dict[int, StaySetting]:
    if not chat_ids:
        return {}
    rows = await db.fetchall(
        f"SELECT chat_id, stay_signal_days, stay_signal_event FROM channels"
        f" WHERE chat_id IN ({marks(len(chat_ids))})",
        chat_ids,
    )
    return {int(r[0]): StaySetting(int(r[0]), r[1], r[2]) for r in rows}


async def counts(db: Database, chat_ids: list[int]) -> dict[int, dict[str, int]]:
    """{chat id: {state: checks}} for the given channels (states with none left out)."""
    if not chat_ids:
        return {}
    rows = await db.fetchall(
        f"SELECT chat_id, state, count(*) FROM stay_checks INDEXED BY stay_chat_state"
        f" WHERE chat_id IN ({marks(len(chat_ids))}) GROUP BY chat_id, state",
        chat_ids,
    )
    found: dict[int, dict[str, int]] = {}
    for chat_id, state, number in rows:
        found.setdefault(int(chat_id), {})[str(state)] = int(number)
    return found


async def sweep(db: Database, *, now: float | None = None, batch: int = 5000) -> int:
    """Schedule checks for attributed joins recorded since the last sweep; return how many.

    Walks join ids above a stored cursor, `batch` ids per transaction, so it costs a
    primary-key range scan however large the joins table is.
    """
    now = time.time() if now is None else now
    scheduled = 0
    while True:
        async with db.transaction() as tx:
            found = await _schedule_unswept(tx, now=now, batch=batch)
        if found is None:
            return scheduled
        scheduled += found


async def _schedule_unswept(tx: Transaction, *, now: float, batch: int | None) -> int | None:
    """In the caller's transaction: schedule checks for the attributed joins above the
    cursor (the next `batch` ids, or all when None) under their channels' settings
    as they are now, and move the cursor past them. How many were scheduled; None
    when there was nothing left to sweep."""
    found = await tx.fetchone("SELECT last_join_id FROM stay_sweep")
    after = int(found[0]) if found else 0
    top = await tx.fetchone("SELECT coalesce(max(id), 0) FROM joins")
    newest = int(top[0]) if top else 0
    if newest <= after:
        return None
    upto = newest if batch is None else min(newest, after + batch)
    inserted = await tx.execute(
        "INSERT INTO stay_checks (join_id, chat_id, user_id, days,"
        " event_type, due_at, created_at)"
        " SELECT j.id, j.chat_id, j.user_id, c.stay_signal_days,"
        " c.stay_signal_event, j.joined_at + c.stay_signal_days * ?, ?"
        " FROM joins j JOIN channels c ON c.chat_id = j.chat_id"
        " WHERE j.id > ? AND j.id <= ? AND j.kind = 'attributed'"
        " AND c.stay_signal_days IS NOT NULL AND c.stay_signal_event IS NOT NULL"
        " AND j.id > c.stay_signal_after ON CONFLICT DO NOTHING",
        (DAY, now, after, upto),
    )
    await tx.execute(
        "INSERT INTO stay_sweep (id, last_join_id, swept_at) VALUES (1, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET last_join_id = excluded.last_join_id,"
        " swept_at = excluded.swept_at",
        (upto, now),
    )
    return max(inserted, 0)


async def due(db: Database, *, now: float, limit: int = 100) -> list[DueCheck]:
    """Pending checks that are due, earliest first.

    A check waits while its join's conversion is still queued: a follow-up event
    for a lead AdTarget does not hold yet would be refused (404 LEAD_NOT_FOUND).
    """
    rows = await db.fetchall(
        "SELECT r.id, r.join_id, r.chat_id, r.user_id, r.days, r.event_type, r.attempts,"
        " coalesce(c.adtarget_channel_id, CAST(r.chat_id AS TEXT))"
        " FROM stay_checks r INDEXED BY stay_due"
        " JOIN channels c ON c.chat_id = r.chat_id"
        " WHERE r.state = 'pending' AND r.due_at <= ?"
        " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.join_id = r.join_id"
        " AND o.state != 'delivered')"
        " ORDER BY r.due_at LIMIT ?",
        (now, limit),
    )
    return [
        DueCheck(
            id=int(r[0]),
            join_id=int(r[1]),
            chat_id=int(r[2]),
            user_id=int(r[3]),
            days=int(r[4]),
            event_type=str(r[5]),
            attempts=int(r[6]),
            report_id=str(r[7]),
        )
        for r in rows
    ]


async def close_parked(db: Database, *, now: float | None = None) -> int:
    """Fail the due checks whose join's conversion is parked; return how many.

    `due` would skip them until an admin's /retry delivered the conversion, and
    `next_due_at` would keep the checker polling for them: a parked conversion
    means AdTarget holds no lead to send the stay event for.
    """
    now = time.time() if now is None else now
    async with db.transaction() as tx:
        closed = await tx.execute(
            "UPDATE stay_checks SET state = 'failed', checked_at = ?,"
            " detail = (SELECT 'conversion parked (outbox row #' || o.id || ')' FROM outbox o"
            " WHERE o.join_id = stay_checks.join_id)"
            " WHERE id IN (SELECT r.id FROM stay_checks r INDEXED BY stay_due"
            " WHERE r.state = 'pending' AND r.due_at <= ? AND EXISTS (SELECT 1 FROM outbox o"
            " WHERE o.join_id = r.join_id AND o.state = 'parked'))",
            (now, now),
        )
    return max(closed, 0)


async def next_due_at(db: Database) -> float | None:
    """The earliest due time of any pending check (it may be waiting on its conversion
    on its way; one whose conversion is parked is closed by `close_parked`)."""
    row = await db.fetchone(
        "SELECT min(due_at) FROM stay_checks INDEXED BY stay_due WHERE state = 'pending'"
    )
    return float(row[0]) if row and row[0] is not None else None


async def record_stayed(
    db: Database, check_id: int, *, status: str, event: outbox.NewRow, now: float | None = None
) -> int | None:
    """Still a member: queue the follow-up event and close the check, in one transaction.

    Either both happen or neither: a crash before the commit leaves the check pending,
    to be asked again after the restart. Only a pending check is closed, and the
    event's Idempotency-Key is fixed by the join, so no path queues it twice.
    """
    now = time.time() if now is None else now
    async with db.transaction() as tx:
        if not await _still_pending(tx, check_id):
            return None
        row_id = await outbox.enqueue(tx, event)
        if row_id is None:  # the key is already queued: point the check at that row
            found = await tx.fetchone(
                "SELECT id FROM outbox WHERE idempotency_key = ?", (event.idempotency_key,)
            )
            row_id = int(found[0]) if found else None
        await tx.execute(
            "UPDATE stay_checks SET state = 'sent', checked_at = ?, status = ?,"
            " outbox_id = ?, detail = NULL WHERE id = ?",
            (now, status, row_id, check_id),
        )
    return row_id


async def record_left(
    db: Database, check_id: int, *, status: str, now: float | None = None
) -> None:
    """Gone: close the check; a leave no update told us about is recorded on the join."""
    at = time.time() if now is None else now
    async with db.transaction() as tx:
        found = await tx.fetchone(
            "SELECT r.chat_id, r.user_id, j.left_at FROM stay_checks r"
            " JOIN joins j ON j.id = r.join_id WHERE r.id = ? AND r.state = 'pending'",
            (check_id,),
        )
        if found is None:
            return
        if found[2] is None:
            # Counted in /stats' leaves like any leave; Telegram's date is unknown, so
            # the time of the check stands in for it.
            leave = joins.NewLeave(int(found[0]), int(found[1]), int(at), None)
            await joins.record_leaves(tx, [leave])
        await tx.execute(
            "UPDATE stay_checks SET state = 'left', checked_at = ?, status = ?,"
            " detail = NULL WHERE id = ?",
            (at, status, check_id),
        )


async def record_failed(
    db: Database, check_id: int, *, reason: str, now: float | None = None
) -> None:
    """Telegram will not answer for this member (chat not found, bot not admin): final."""
    now = time.time() if now is None else now
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE stay_checks SET state = 'failed', checked_at = ?, detail = ?,"
            " attempts = attempts + 1 WHERE id = ? AND state = 'pending'",
            (now, reason[:500], check_id),
        )


async def retry_later(db: Database, check_id: int, *, at: float, error: str) -> None:
    """A transient failure: ask again at `at`."""
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE stay_checks SET due_at = ?, detail = ?, attempts = attempts + 1"
            " WHERE id = ? AND state = 'pending'",
            (at, error[:500], check_id),
        )


async def _still_pending(tx: Transaction, check_id: int) -> bool:
    found = await tx.fetchone(
        "SELECT 1 FROM stay_checks WHERE id = ? AND state = 'pending'", (check_id,)
    )
    return found is not None
