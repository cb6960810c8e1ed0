"""Joins and leaves as Telegram reported them, written a getUpdates batch at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Transaction
from storage.sql import rows_of_marks


@dataclass(frozen=True, slots=True)
class NewJoin:
    chat_id: int
    user_id: int
    kind: str  # attributed | campaign | organic
    link_id: int | None
    link_url: str | None
    via_join_request: bool
    joined_at: int
    update_id: int | None
    # Attribution copied onto the join for /stats (top sources without table joins):
    # the visit's utm_source / utm_campaign for attributed joins, the link's campaign
    # name for campaign joins.
    utm_source: str | None = None
    utm_campaign: str | None = None
    campaign: str | None = None


@dataclass(frozen=True, slots=True)
class NewLeave:
    chat_id: int
    user_id: int
    left_at: int
    update_id: int | None


async def insert_many(tx: Transaction, rows: list[NewJoin]) -> dict[int, int]:
    """Insert joins, ignoring ones already recorded (natural keys).

    Returns {index in `rows`: new join id} for the rows that were new. One
    statement per JOIN_CHUNK rows: the RETURNING names the new rows by their
    unique key, whatever other writers do meanwhile.
    """
    new: dict[int, int] = {}
    for start in range(0, len(rows), JOIN_CHUNK):
        chunk = rows[start : start + JOIN_CHUNK]
        for index, join_id in (await _insert_chunk(tx, chunk)).items():
            new[start + index] = join_id
    return new


# Rows per INSERT: 12 values each stays far below SQLite's 32,766 variables.
JOIN_CHUNK = 500


async def _insert_chunk(tx: Transaction, rows: list[NewJoin]) -> dict[int, int]:
    if not rows:
        return {}
    now = time.time()
    created = await tx.fetchall(
        "INSERT INTO joins (chat_id, user_id, kind, link_id, link_url,"
        " via_join_request, joined_at, update_id, created_at, utm_source, utm_campaign, campaign)"
        f" VALUES {rows_of_marks(len(rows), 12)} ON CONFLICT DO NOTHING"
        " RETURNING id, chat_id, user_id, link_id, joined_at",
        [
            value
            for r in rows
            for value in (
                r.chat_id,
                r.user_id,
                r.kind,
                r.link_id,
                r.link_url,
                int(r.via_join_request),
                r.joined_at,
                r.update_id,
                now,
                r.utm_source,
                r.utm_campaign,
                r.campaign,
            )
        ],
    )
    # The unique keys: (chat, user, link), or (chat, user, time) for a link-less join.
    by_key = {(r[1], r[2], r[3], None if r[3] else r[4]): int(r[0]) for r in created}
    new: dict[int, int] = {}
    for index, r in enumerate(rows):
        key = (r.chat_id, r.user_id, r.link_id, None if r.link_id else r.joined_at)
        join_id = by_key.pop(key, None)  # pop: a duplicate inside the batch is not new twice
        if join_id is not None:
            new[index] = join_id
    return new


async def reopen(tx: Transaction, rows: list[NewJoin]) -> set[int]:
    """Rejoins through a link already used by the same member: the join is
    recorded (and converted) once per (chat, user, link), so the rejoin opens
    that join again instead, and the member counts as present. A join that was
    left before the rejoin's date, with no leave after it, is reopened; a
    redelivery of the first join is not. Call it after the batch's leaves.

    Returns the indices in `rows` that reopened a join."""
    reopened: set[int] = set()
    for index, r in enumerate(rows):
        if r.link_id is None:
            continue  # a link-less join has its own row per date
        changed = await tx.execute(
            "UPDATE joins SET left_at = NULL WHERE chat_id = :chat AND user_id = :user"
            " AND link_id = :link AND left_at IS NOT NULL AND left_at <= :at"
            " AND NOT EXISTS (SELECT 1 FROM leaves WHERE chat_id = :chat AND user_id = :user"
            " AND left_at > :at)",
            {"chat": r.chat_id, "user": r.user_id, "link": r.link_id, "at": r.joined_at},
        )
        if changed:
            reopened.add(index)
    return reopened


async def record_leaves(tx: Transaction, rows: list[NewLeave]) -> int:
    """Record leaves and close the member's open joins; repeats are no-ops.

    Returns how many leaves were new (a repeat is not counted twice)."""
    if not rows:
        return 0
    inserted = await tx.executemany(
        "INSERT INTO leaves (chat_id, user_id, left_at, update_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(r.chat_id, r.user_id, r.left_at, r.update_id) for r in rows],
    )
    for row in rows:
        if row.update_id is not None:
            await _replace_made_up_leave(tx, row)
    await tx.executemany(
        "UPDATE joins SET left_at = ? WHERE chat_id = ? AND user_id = ?"
        " AND left_at IS NULL AND joined_at <= ?",
        [(r.left_at, r.chat_id, r.user_id, r.left_at) for r in rows],
    )
    return inserted


async def _replace_made_up_leave(tx: Transaction, real: NewLeave) -> None:
    """A stay check that found the member gone recorded a leave at the check's
    time (update_id NULL); the late real update has Telegram's date. Keep only the
    real one, so /stats counts the leave once, and put its date on the join.

    Only a made-up leave of the same stay counts: after the join the real leave
    closes, with no later join in between."""
    params = {"chat": real.chat_id, "user": real.user_id, "at": real.left_at}
    made_up = await tx.fetchall(
        "DELETE FROM leaves WHERE chat_id = :chat AND user_id = :user AND update_id IS NULL"
        " AND left_at >= (SELECT max(joined_at) FROM joins"
        " WHERE chat_id = :chat AND user_id = :user AND joined_at <= :at)"
        " AND NOT EXISTS (SELECT 1 FROM joins j WHERE j.chat_id = :chat AND j.user_id = :user"
        " AND j.joined_at > :at AND j.joined_at <= leaves.left_at)"
        " RETURNING left_at",
        params,
    )
    for (left_at,) in made_up:
        await tx.execute(
            "UPDATE joins SET left_at = :at WHERE chat_id = :chat AND user_id = :user"
            " AND joined_at <= :at AND left_at = :made_up",
            {**params, "made_up": left_at},
        )


async def recent_joins(
    tx: Transaction, chat_users: list[tuple[int, int]], *, since: int
) -> dict[tuple[int, int], list[tuple[int, bool]]]:
    """(join time, through an approved join request) per (chat, user), at or after `since`."""
    if not chat_users:
        return {}
    pairs = sorted(set(chat_users))
    marks = ", ".join("(?, ?)" for _ in pairs)
    flat = [value for pair in pairs for value in pair]
    rows = await tx.fetchall(
        f"SELECT chat_id, user_id, joined_at, via_join_request FROM joins"
        f" WHERE (chat_id, user_id) IN (VALUES {marks}) AND joined_at >= ?",
        [*flat, since],
    )
    found: dict[tuple[int, int], list[tuple[int, bool]]] = {}
    for row in rows:
        found.setdefault((int(row[0]), int(row[1])), []).append((int(row[2]), bool(row[3])))
    return found
