"""Invite links the bot minted, and the lookup from a join's link back to them."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import aiosqlite

from storage.db import Database


@dataclass(frozen=True, slots=True)
class InviteLink:
    id: int
    url: str
    chat_id: int
    kind: str  # 'visitor' | 'campaign'
    name: str
    visit_id: int | None
    campaign: str | None
    creates_join_request: bool
    expire_date: int | None


LINK_COLUMNS = "id, url, chat_id, kind, name, visit_id, campaign, creates_join_request, expire_date"


async def insert(
    conn: aiosqlite.Connection,
    *,
    url: str,
    chat_id: int,
    kind: str,
    name: str,
    visit_id: int | None,
    campaign: str | None,
    creates_join_request: bool,
    expire_date: int | None,
) -> InviteLink:
    async with conn.execute(
        "INSERT INTO invite_links (url, chat_id, kind, name, visit_id, campaign,"
        " creates_join_request, expire_date, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        (
            url,
            chat_id,
            kind,
            name,
            visit_id,
            campaign,
            int(creates_join_request),
            expire_date,
            time.time(),
        ),
    ) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return InviteLink(
        int(row[0]), url, chat_id, kind, name, visit_id, campaign, creates_join_request, expire_date
    )


def find_by_urls(conn: sqlite3.Connection, urls: list[str]) -> dict[str, InviteLink]:
    """Links we minted, by the URLs Telegram reported on joins (absent: not ours)."""
    if not urls:
        return {}
    marks = ", ".join("?" for _ in urls)
    rows = conn.execute(f"SELECT {LINK_COLUMNS} FROM invite_links WHERE url IN ({marks})", urls)
    return {row["url"]: link_from_row(row) for row in rows}


def link_from_row(row: sqlite3.Row) -> InviteLink:
    return InviteLink(
        id=row["id"],
        url=row["url"],
        chat_id=row["chat_id"],
        kind=row["kind"],
        name=row["name"],
        visit_id=row["visit_id"],
        campaign=row["campaign"],
        creates_join_request=bool(row["creates_join_request"]),
        expire_date=row["expire_date"],
    )


def mark_used(conn: sqlite3.Connection, link_ids: list[int]) -> None:
    now = time.time()
    conn.executemany(
        "UPDATE invite_links SET used_at = coalesce(used_at, ?) WHERE id = ?",
        [(now, link_id) for link_id in link_ids],
    )


async def campaign_links(db: Database, chat_ids: list[int]) -> list[tuple[InviteLink, int, int]]:
    """Campaign links in these channels with (joins, members still present)."""
    if not chat_ids:
        return []
    marks = ", ".join("?" for _ in chat_ids)
    rows = await db.fetchall(
        f"SELECT {', '.join('l.' + c.strip() for c in LINK_COLUMNS.split(','))},"
        " count(j.id) AS joins, count(j.id) FILTER (WHERE j.left_at IS NULL) AS present"
        f" FROM invite_links l LEFT JOIN joins j ON j.link_id = l.id"
        f" WHERE l.kind = 'campaign' AND l.chat_id IN ({marks}) GROUP BY l.id ORDER BY l.id",
        chat_ids,
    )
    return [(link_from_row(r), int(r["joins"]), int(r["present"])) for r in rows]
