"""Tracked channels: where the bot is admin, and each channel's settings."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import aiosqlite

from storage.db import Database
from storage.sql import marks


@dataclass(frozen=True, slots=True)
class Channel:
    chat_id: int
    title: str
    username: str | None
    active: bool
    can_invite_users: bool
    event_type: str | None
    mode: str
    adtarget_channel_id: str | None
    adtarget_event_type: str | None = None
    promoted_by: int | None = None

    @property
    def report_id(self) -> str:
        """The channelId AdTarget knows this channel by."""
        return self.adtarget_channel_id or str(self.chat_id)


_COLUMNS = (
    "chat_id, title, username, active, can_invite_users, event_type, mode, adtarget_channel_id,"
    " adtarget_event_type, promoted_by"
)


def _channel(row: sqlite3.Row) -> Channel:
    return Channel(
        chat_id=row["chat_id"],
        title=row["title"],
        username=row["username"],
        active=bool(row["active"]),
        can_invite_users=bool(row["can_invite_users"]),
        event_type=row["event_type"],
        mode=row["mode"],
        adtarget_channel_id=row["adtarget_channel_id"],
        adtarget_event_type=row["adtarget_event_type"],
        promoted_by=row["promoted_by"],
    )


async def upsert(
    conn: aiosqlite.Connection,
    chat_id: int,
    *,
    title: str,
    username: str | None,
    chat_type: str,
    active: bool,
    can_invite_users: bool,
    promoted_by: int | None = None,
) -> None:
    now = time.time()
    await conn.execute(
        "INSERT INTO channels (chat_id, title, username, chat_type, active, can_invite_users,"
        " promoted_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (chat_id) DO UPDATE SET title = excluded.title,"
        " username = excluded.username, chat_type = excluded.chat_type,"
        " active = excluded.active, can_invite_users = excluded.can_invite_users,"
        " promoted_by = coalesce(excluded.promoted_by, promoted_by),"
        " updated_at = excluded.updated_at",
        (
            chat_id,
            title,
            username,
            chat_type,
            int(active),
            int(can_invite_users),
            promoted_by,
            now,
            now,
        ),
    )


def ensure_known(
    conn: sqlite3.Connection, chats: list[tuple[int, str, str | None, str]]
) -> dict[int, Channel]:
    """The channel rows for (chat_id, title, username, type), creating unknown ones.

    Telegram sends chat_member updates only to admins, so such a chat is one the
    bot administers even if its my_chat_member update came before we ran.
    """
    if not chats:
        return {}
    ids = sorted({chat[0] for chat in chats})
    select = f"SELECT {_COLUMNS} FROM channels WHERE chat_id IN ({marks(len(ids))})"
    known = {int(row["chat_id"]): _channel(row) for row in conn.execute(select, ids)}
    if len(known) == len(ids):
        return known  # the usual case: one statement, no write
    now = time.time()
    conn.executemany(
        "INSERT INTO channels (chat_id, title, username, chat_type, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (chat_id) DO NOTHING",
        [(chat_id, title, username, kind, now, now) for chat_id, title, username, kind in chats],
    )
    return {int(row["chat_id"]): _channel(row) for row in conn.execute(select, ids)}


async def get_in(conn: aiosqlite.Connection, chat_id: int) -> Channel | None:
    async with conn.execute(f"SELECT {_COLUMNS} FROM channels WHERE chat_id = ?", (chat_id,)) as c:
        row = await c.fetchone()
    return _channel(row) if row else None


async def get(db: Database, chat_id: int) -> Channel | None:
    async with db.reader() as conn:
        return await get_in(conn, chat_id)


async def list_all(db: Database) -> list[Channel]:
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM channels ORDER BY title, chat_id")
    return [_channel(r) for r in rows]


async def set_event_type(db: Database, chat_id: int, event_type: str | None) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE channels SET event_type = ?, updated_at = ? WHERE chat_id = ?",
            (event_type, time.time(), chat_id),
        )


async def set_mode(db: Database, chat_id: int, mode: str) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE channels SET mode = ?, updated_at = ? WHERE chat_id = ?",
            (mode, time.time(), chat_id),
        )


async def set_adtarget_id(
    db: Database,
    chat_id: int,
    adtarget_channel_id: str | None,
    adtarget_event_type: str | None = None,
) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE channels SET adtarget_channel_id = ?, adtarget_event_type = ?,"
            " updated_at = ? WHERE chat_id = ?",
            (adtarget_channel_id, adtarget_event_type, time.time(), chat_id),
        )


async def resolve(db: Database, text: str) -> Channel | None:
    """A channel by its Telegram id (-100…), @username or AdTarget channel id."""
    text = text.strip()
    param: int | str
    if text.lstrip("-").isdigit():
        sql, param = f"SELECT {_COLUMNS} FROM channels WHERE chat_id = ?", int(text)
    elif text.startswith("@"):
        sql = f"SELECT {_COLUMNS} FROM channels WHERE lower(username) = lower(?)"
        param = text[1:]
    else:
        sql, param = f"SELECT {_COLUMNS} FROM channels WHERE adtarget_channel_id = ?", text
    row = await db.fetchone(sql, (param,))
    return _channel(row) if row else None
