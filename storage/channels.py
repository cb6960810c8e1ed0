"""Tracked channels: where the bot is admin, and each channel's settings."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from storage.db import Database, Row, Transaction
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
    onboarded_at: float | None = None  # the full onboarding was sent
    # Set with event_type by /event; a Purchase needs both (bot/adtarget/events.py JoinEvent).
    event_value: float | None = None
    event_currency: str | None = None

    @property
    def report_id(self) -> str:
        """The channelId AdTarget knows this channel by."""
        return self.adtarget_channel_id or str(self.chat_id)


_COLUMNS = (
    "chat_id, title, username, active, can_invite_users, event_type, mode, adtarget_channel_id,"
    " adtarget_event_type, promoted_by, onboarded_at, event_value, event_currency"
)


def _channel(row: Row) -> Channel:
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
        onboarded_at=row["onboarded_at"],
        event_value=row["event_value"],
        event_currency=row["event_currency"],
    )


async def upsert_in(
    tx: Transaction,
    chat_id: int,
    *,
    title: str,
    username: str | None,
    chat_type: str,
    active: bool,
    can_invite_users: bool,
    promoted_by: int | None = None,
) -> None:
    """Track a chat (the bot was promoted there, or an admin added it), or update it."""
    now = time.time()
    await _release_username(tx, chat_id, username)
    await tx.execute(
        "INSERT INTO channels (chat_id, title, username, chat_type, active, can_invite_users,"
        " promoted_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (chat_id) DO UPDATE SET title = excluded.title,"
        " username = excluded.username, chat_type = excluded.chat_type,"
        " active = excluded.active, can_invite_users = excluded.can_invite_users,"
        " promoted_by = coalesce(excluded.promoted_by, channels.promoted_by),"
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


async def mark_onboarded_in(tx: Transaction, chat_id: int) -> None:
    await tx.execute(
        "UPDATE channels SET onboarded_at = ? WHERE chat_id = ?", (time.time(), chat_id)
    )


async def _release_username(tx: Transaction, chat_id: int, username: str | None) -> None:
    """A public username belongs to one chat at a time: when Telegram shows it on
    `chat_id`, the chat that had it before gave it up."""
    if username:
        await tx.execute(
            "UPDATE channels SET username = NULL, updated_at = ?"
            " WHERE lower(username) = lower(?) AND chat_id != ?",
            (time.time(), username, chat_id),
        )


async def tracked_in(
    tx: Transaction, chats: list[tuple[int, str, str | None]]
) -> dict[int, Channel]:
    """The tracked channels among (chat_id, title, username) as an update showed
    them, their title and username refreshed from it. Chats that are not tracked
    are left out: the bot may be admin of a discussion group or any other chat
    nobody set it up in, and those are none of its business.
    """
    if not chats:
        return {}
    ids = sorted({chat[0] for chat in chats})
    select = f"SELECT {_COLUMNS} FROM channels WHERE chat_id IN ({marks(len(ids))})"
    known = {int(row["chat_id"]): _channel(row) for row in await tx.fetchall(select, ids)}
    shown = {chat_id: (title, username) for chat_id, title, username in chats if chat_id in known}
    stale = {
        chat_id: (title or known[chat_id].title, username)
        for chat_id, (title, username) in shown.items()
        if (title and title != known[chat_id].title) or username != known[chat_id].username
    }
    if not stale:
        return known  # the usual case: one statement, no write
    now = time.time()
    for chat_id, (title, username) in stale.items():
        await _release_username(tx, chat_id, username)
        await tx.execute(
            "UPDATE channels SET title = ?, username = ?, updated_at = ? WHERE chat_id = ?",
            (title, username, now, chat_id),
        )
    return {int(row["chat_id"]): _channel(row) for row in await tx.fetchall(select, ids)}


async def get_in(tx: Transaction, chat_id: int) -> Channel | None:
    row = await tx.fetchone(f"SELECT {_COLUMNS} FROM channels WHERE chat_id = ?", (chat_id,))
    return _channel(row) if row else None


async def get(db: Database, chat_id: int) -> Channel | None:
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM channels WHERE chat_id = ?", (chat_id,))
    return _channel(row) if row else None


async def list_all(db: Database) -> list[Channel]:
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM channels ORDER BY title, chat_id")
    return [_channel(r) for r in rows]


async def set_event_type(
    db: Database,
    chat_id: int,
    event_type: str | None,
    *,
    value: float | None = None,
    currency: str | None = None,
) -> None:
    """The channel's join event with its value and currency, all three together:
    an event set without a value clears the one before."""
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE channels SET event_type = ?, event_value = ?, event_currency = ?,"
            " updated_at = ? WHERE chat_id = ?",
            (event_type, value, currency, time.time(), chat_id),
        )


async def set_mode(db: Database, chat_id: int, mode: str) -> None:
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE channels SET mode = ?, updated_at = ? WHERE chat_id = ?",
            (mode, time.time(), chat_id),
        )


async def set_adtarget_id(
    db: Database,
    chat_id: int,
    adtarget_channel_id: str | None,
    adtarget_event_type: str | None = None,
) -> None:
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE channels SET adtarget_channel_id = ?, adtarget_event_type = ?,"
            " updated_at = ? WHERE chat_id = ?",
            (adtarget_channel_id, adtarget_event_type, time.time(), chat_id),
        )


async def resolve(db: Database, text: str) -> Channel | None:
    """A channel by its Telegram id (-100…), @username or AdTarget channel id."""
    text = text.strip()
    param: int | str
    if re.fullmatch(r"-?[0-9]{1,19}", text) and -(2**63) <= int(text) < 2**63:
        sql, param = f"SELECT {_COLUMNS} FROM channels WHERE chat_id = ?", int(text)
    elif text.startswith("@"):
        sql = f"SELECT {_COLUMNS} FROM channels WHERE lower(username) = lower(?)"
        param = text[1:]
    else:
        sql, param = f"SELECT {_COLUMNS} FROM channels WHERE adtarget_channel_id = ?", text
    row = await db.fetchone(sql, (param,))
    return _channel(row) if row else None
