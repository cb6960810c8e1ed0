"""The outbox: every request towards AdTarget, durable until delivered or parked.

States: pending -> sending (claimed, attempt counted, leased) -> delivered, or
back to pending with a later `next_attempt_at`, or parked with a reason.

Whatever makes rows due for another process's courier notifies OUTBOX_CHANNEL
in its transaction (`Transaction.notify`): the leader's courier listens there
(`Courier.listen`), so a visit a standby records is sent without waiting for a
timer. Changes the courier makes to its own rows (reschedule, the lease rescue)
notify nobody: it looks for due rows after each of them anyway.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import orjson

from storage.db import Database, Row, Transaction
from storage.sql import marks

MAX_ERRORS_KEPT = 20

# The notification channel of new due rows (see the module's docstring).
OUTBOX_CHANNEL = "joinbridge_outbox"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    kind: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    idempotency_key: str
    telegram_user_id: int | None
    chat_id: int | None
    event_type: str | None
    event_time_ms: int | None
    attempts: int
    first_attempt_at: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    pending: int
    sending: int
    delivered: int
    parked: int
    oldest_pending_at: float | None


_COLUMNS = (
    "id, kind, path, body, headers, idempotency_key, telegram_user_id, chat_id, event_type,"
    " event_time_ms, attempts, first_attempt_at, created_at"
)


def _row(row: Row) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        kind=row["kind"],
        path=row["path"],
        body=orjson.loads(row["body"]),
        headers=json.loads(row["headers"]) if row["headers"] else {},
        idempotency_key=row["idempotency_key"],
        telegram_user_id=row["telegram_user_id"],
        chat_id=row["chat_id"],
        event_type=row["event_type"],
        event_time_ms=row["event_time_ms"],
        attempts=row["attempts"],
        first_attempt_at=row["first_attempt_at"],
        created_at=row["created_at"],
    )


# The claim order's first key. Claims and the next-due lookup ask for each
# priority by value: the index (state, priority, next_attempt_at) then serves
# `next_attempt_at <= now` as a range per priority. Asked across priorities
# instead, SQLite walks every pending row: 6 ms a claim, on every join, with
# 100,000 rows backing off during an AdTarget outage (bench/RESULTS.md).
PRIORITIES = (0, 1)
_PRIORITY_IN = f"priority IN ({', '.join(str(p) for p in PRIORITIES)})"

# Forwards of what a visitor did on the landing page: best effort, unlike
# conversions and follow-ups. Each becomes a request on the key's 300/min, so a
# flood of visits must not grow the queue without bound: beyond a cap they are
# dropped when queued, and dropped once too old (bot/tracker/visits.py, bot/courier/service.py).
# The conversion of a join carries its visit's attribution itself, so a dropped
# forward costs AdTarget's visit records, never a conversion's attribution.
FORWARD_KINDS = ("visit", "update_fbp")
# Forwards are always queued at this priority (NewRow checks it): asking for it
# lets the index outbox_due serve the count and the sweep below.
FORWARD_PRIORITY = 1
_FORWARD = (
    f"priority = {FORWARD_PRIORITY} AND kind IN ({', '.join(repr(k) for k in FORWARD_KINDS)})"
)


@dataclass(frozen=True, slots=True)
class NewRow:
    """A request to queue for AdTarget."""

    kind: str
    path: str
    body: dict[str, Any]
    idempotency_key: str
    headers: dict[str, str] | None = None
    join_id: int | None = None
    telegram_user_id: int | None = None
    chat_id: int | None = None
    event_type: str | None = None
    event_time_ms: int | None = None
    priority: int = 0  # lower goes first: 0 conversions, 1 visit forwards

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            # A priority outside PRIORITIES would never be claimed.
            raise ValueError(f"outbox priority must be one of {PRIORITIES}, not {self.priority}")
        if self.kind in FORWARD_KINDS and self.priority != FORWARD_PRIORITY:
            # Elsewhere the cap and the age sweep would never see it.
            raise ValueError(
                f"{self.kind} rows go at priority {FORWARD_PRIORITY}, not {self.priority}"
            )


_INSERT = (
    "INSERT INTO outbox (kind, path, body, headers, idempotency_key, join_id,"
    " telegram_user_id, chat_id, event_type, event_time_ms, priority, next_attempt_at,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


def _body_json(body: dict[str, Any]) -> str:
    # orjson: the same compact JSON, ~8x faster (it counts in a burst of joins).
    try:
        return orjson.dumps(body).decode()
    except orjson.JSONEncodeError:
        # A lone surrogate, say, which only json escapes; the row is still kept.
        return json.dumps(body, separators=(",", ":"))


def _params(row: NewRow, now: float) -> tuple[Any, ...]:
    return (
        row.kind,
        row.path,
        _body_json(row.body),
        json.dumps(row.headers) if row.headers else None,
        row.idempotency_key,
        row.join_id,
        row.telegram_user_id,
        row.chat_id,
        row.event_type,
        row.event_time_ms,
        row.priority,
        now,
        now,
    )


async def enqueue(tx: Transaction, row: NewRow) -> int | None:
    """Queue one row; None when a row with its idempotency key already exists."""
    found = await tx.fetchone(_INSERT + " RETURNING id", _params(row, time.time()))
    if not found:
        return None
    await tx.notify(OUTBOX_CHANNEL)
    return int(found[0])


async def enqueue_many(tx: Transaction, rows: list[NewRow]) -> None:
    """Queue rows in the caller's transaction; repeats of a key are ignored."""
    if rows:
        now = time.time()
        await tx.executemany(_INSERT, [_params(row, now) for row in rows])
        # Even when every key was a repeat: a needless wake costs one look.
        await tx.notify(OUTBOX_CHANNEL)


# Forwards waiting to be sent, counted up to a limit: the walk stops there.
_QUEUED_FORWARDS = (
    "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE state IN ('pending', 'sending')"
    f" AND {_FORWARD} LIMIT ?) AS queued"
)


async def queued_forwards_in(tx: Transaction, *, limit: int) -> int:
    """Visit and update-fbp forwards pending or being sent, counted up to `limit`."""
    found = await tx.fetchone(_QUEUED_FORWARDS, (limit,))
    return int(found[0]) if found else 0


# A forward too old to be worth sending: pending, or parked (refused by AdTarget
# or impossible to send) and shown to admins until then. A row being sent is
# left to finish. A batch per transaction, so that the writer (and the joins
# waiting on it) is not held for the whole backlog of an outage at once.
_DROP_BATCH = 2000
_AGED_FORWARDS = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state IN ('pending', 'parked')"
    f" AND {_FORWARD} AND created_at < ? LIMIT {_DROP_BATCH}) RETURNING kind"
)


async def drop_aged_forwards(
    db: Database, *, max_age: float, now: float | None = None
) -> list[str]:
    """Delete forwards older than `max_age` seconds; the kinds of those deleted."""
    before = (time.time() if now is None else now) - max_age
    dropped: list[str] = []
    while True:
        async with db.transaction() as tx:
            kinds = [str(r[0]) for r in await tx.fetchall(_AGED_FORWARDS, (before,))]
        dropped += kinds
        if len(kinds) < _DROP_BATCH:
            return dropped


async def claim(
    db: Database, *, limit: int, lease: float, now: float | None = None
) -> list[OutboxRow]:
    """Take up to `limit` due rows: mark them sending, count the attempt, lease them."""
    at = time.time() if now is None else now
    async with db.transaction() as tx:
        return await claim_in(tx, limit=limit, lease=lease, now=at)


async def claim_in(tx: Transaction, *, limit: int, lease: float, now: float) -> list[OutboxRow]:
    """`claim`, in the caller's transaction."""
    # SKIP LOCKED (PostgreSQL): rows another transaction is claiming are passed
    # over, never claimed twice nor waited for. Today every writing transaction
    # on PostgreSQL also holds storage/postgres.py's WRITE_LOCK, so two claims
    # run one after the other and find nothing locked; without that lock (a
    # lighter one some day, or a claim outside it) this clause is what keeps
    # two couriers' claims apart. SQLite: one writer at a time, nothing to add.
    due = await tx.fetchall(
        f"SELECT id FROM outbox WHERE state = 'pending' AND {_PRIORITY_IN}"
        " AND next_attempt_at <= ? ORDER BY priority, next_attempt_at, id LIMIT ?"
        + tx.dialect.skip_locked,
        (now, limit),
    )
    if not due:
        return []
    # Two statements, not `WHERE id IN (SELECT ...) RETURNING`: SQLite takes
    # ~150 us more for that form, on every claim (bench/RESULTS.md).
    ids = [r[0] for r in due]
    rows = await tx.fetchall(
        f"UPDATE outbox SET state = 'sending', attempts = attempts + 1, lease_until = ?,"
        f" first_attempt_at = coalesce(first_attempt_at, ?)"
        f" WHERE id IN ({marks(len(ids))}) RETURNING {_COLUMNS}",
        (now + lease, now, *ids),
    )
    return sorted((_row(r) for r in rows), key=lambda r: r.id)


def _error_entry(attempt: int, error: str, now: float) -> str:
    return json.dumps({"at": round(now, 3), "attempt": attempt, "error": error})


async def mark_delivered(
    db: Database,
    row_id: int,
    *,
    conversion_id: str | None,
    dispatched: bool | None,
    warning: str | None,
    replayed: bool,
) -> None:
    await db.execute(
        "UPDATE outbox SET state = 'delivered', delivered_at = ?, lease_until = NULL,"
        " conversion_id = ?, dispatched = ?, warning = ?, replayed = ? WHERE id = ?",
        (
            time.time(),
            conversion_id,
            None if dispatched is None else int(dispatched),
            warning,
            int(replayed),
            row_id,
        ),
    )


async def reschedule(
    db: Database, row_id: int, *, attempt: int, next_attempt_at: float, error: str
) -> None:
    """Back to pending, to be tried again at `next_attempt_at`. Only the courier
    reschedules its own rows, and looks for the next due one afterwards: no notify."""
    entry = _error_entry(attempt, error, time.time())
    await db.execute(
        f"UPDATE outbox SET state = 'pending', lease_until = NULL, next_attempt_at = ?,"
        f" last_error = ?, {db.dialect.append_error} WHERE id = ?",
        (next_attempt_at, error, MAX_ERRORS_KEPT, entry, row_id),
    )


async def hand_back(db: Database, row_ids: list[int]) -> None:
    """Return claimed rows untouched (shutdown, or the courier paused before sending)."""
    if not row_ids:
        return
    async with db.transaction() as tx:
        returned = await tx.execute(
            f"UPDATE outbox SET state = 'pending', lease_until = NULL,"
            f" attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
            f" WHERE state = 'sending' AND id IN ({marks(len(row_ids))})",
            row_ids,
        )
        if returned:
            # Due at once: a leader stepping down hands them to the next one.
            await tx.notify(OUTBOX_CHANNEL)


async def park(db: Database, row_id: int, *, attempt: int, reason: str) -> None:
    now = time.time()
    async with db.transaction() as tx:
        await tx.execute(
            f"UPDATE outbox SET state = 'parked', lease_until = NULL, parked_reason = ?,"
            f" last_error = ?, {tx.dialect.append_error} WHERE id = ?",
            (reason, reason, MAX_ERRORS_KEPT, _error_entry(attempt, reason, now), row_id),
        )


async def rescue_claimed(db: Database, *, now: float | None = None, expired_only: bool) -> int:
    """Rows left in `sending` by a process that died go back to pending.

    At start every claimed row is orphaned (the instance lock guarantees no
    other process owns them); while running, only rows whose lease expired.
    """
    now = time.time() if now is None else now
    sql = "UPDATE outbox SET state = 'pending', lease_until = NULL, next_attempt_at = ?"
    sql += " WHERE state = 'sending'"
    params: tuple[float, ...] = (now,)
    if expired_only:
        sql += " AND lease_until < ?"
        params = (now, now)
    return await db.execute(sql, params)


async def earliest_lease_end(db: Database) -> float | None:
    """When the first claimed row's lease runs out (None: no row is claimed)."""
    row = await db.fetchone("SELECT min(lease_until) FROM outbox WHERE state = 'sending'")
    return float(row[0]) if row and row[0] is not None else None


async def retry_parked(db: Database, row_id: int | None = None) -> int:
    """Re-queue one parked row, or all of them; the attempt count starts afresh.

    Rows past RETENTION_DAYS (scrubbed) stay parked: they lost the click ids,
    IP and User-Agent an ad platform matches on, so sending them now would
    report a join nobody can attribute."""
    where = "state = 'parked' AND scrubbed_at IS NULL" + (
        " AND id = ?" if row_id is not None else ""
    )
    params: tuple[Any, ...] = (time.time(),) + ((row_id,) if row_id is not None else ())
    async with db.transaction() as tx:
        count = await tx.execute(
            f"UPDATE outbox SET state = 'pending', next_attempt_at = ?, parked_reason = NULL,"
            f" attempts = 0 WHERE {where}",
            params,
        )
        if count:
            # The process re-queueing them need not be the one whose courier sends.
            await tx.notify(OUTBOX_CHANNEL)
    return count


# One min() per priority: each is a single seek in the index (see PRIORITIES).
_NEXT_DUE = (
    "SELECT min(due) FROM ("
    + " UNION ALL ".join(
        f"SELECT min(next_attempt_at) AS due FROM outbox WHERE state = 'pending' AND priority = {p}"
        for p in PRIORITIES
    )
    + ") AS per_priority"
)


async def next_due_at(db: Database) -> float | None:
    row = await db.fetchone(_NEXT_DUE)
    return float(row[0]) if row and row[0] is not None else None


async def counts(db: Database) -> OutboxCounts:
    rows = await db.fetchall("SELECT state, count(*) FROM outbox GROUP BY state")
    by_state = {r[0]: int(r[1]) for r in rows}
    oldest = await db.fetchone(
        "SELECT min(created_at) FROM outbox WHERE state IN ('pending', 'sending')"
    )
    return OutboxCounts(
        pending=by_state.get("pending", 0),
        sending=by_state.get("sending", 0),
        delivered=by_state.get("delivered", 0),
        parked=by_state.get("parked", 0),
        oldest_pending_at=float(oldest[0]) if oldest and oldest[0] is not None else None,
    )


async def get(db: Database, row_id: int) -> dict[str, Any] | None:
    row = await db.fetchone("SELECT * FROM outbox WHERE id = ?", (row_id,))
    return dict(row) if row else None


async def parked(db: Database, *, limit: int) -> list[tuple[int, str]]:
    """(row id, reason) of parked rows, newest first."""
    rows = await db.fetchall(
        "SELECT id, coalesce(parked_reason, last_error, '') FROM outbox WHERE state = 'parked'"
        " ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [(int(r[0]), str(r[1])) for r in rows]
