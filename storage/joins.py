"""Joins and leaves as Telegram reported them."""

from __future__ import annotations

import time

import aiosqlite


async def insert(
    conn: aiosqlite.Connection,
    *,
    chat_id: int,
    user_id: int,
    kind: str,
    link_id: int | None,
    link_url: str | None,
    via_join_request: bool,
    joined_at: int,
    update_id: int | None,
) -> int | None:
    """The new join's id, or None when this join is already recorded."""
    async with conn.execute(
        "INSERT OR IGNORE INTO joins (chat_id, user_id, kind, link_id, link_url,"
        " via_join_request, joined_at, update_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            chat_id,
            user_id,
            kind,
            link_id,
            link_url,
            int(via_join_request),
            joined_at,
            update_id,
            time.time(),
        ),
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else None


async def record_leave(
    conn: aiosqlite.Connection, *, chat_id: int, user_id: int, left_at: int, update_id: int | None
) -> bool:
    """Record a leave and close the member's open joins; False for a repeat."""
    async with conn.execute(
        "INSERT OR IGNORE INTO leaves (chat_id, user_id, left_at, update_id)"
        " VALUES (?, ?, ?, ?) RETURNING id",
        (chat_id, user_id, left_at, update_id),
    ) as cursor:
        inserted = await cursor.fetchone() is not None
    if inserted:
        await conn.execute(
            "UPDATE joins SET left_at = ? WHERE chat_id = ? AND user_id = ?"
            " AND left_at IS NULL AND joined_at <= ?",
            (left_at, chat_id, user_id, left_at),
        )
    return inserted
