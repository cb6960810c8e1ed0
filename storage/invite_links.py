"""Invite links the bot minted, and the lookup from a join's link back to them."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import aiosqlite

from storage.db import Database
from storage.sql import marks
from storage.visits import ATTRIBUTION_COLUMNS, Attribution


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
_LINK_FIELDS = [c.strip() for c in LINK_COLUMNS.split(",")]
_LINK_AND_VISIT = ", ".join(
    [f"l.{c}" for c in _LINK_FIELDS] + [f"v.{c}" for c in ATTRIBUTION_COLUMNS]
)


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
    rows = conn.execute(
        f"SELECT {LINK_COLUMNS} FROM invite_links WHERE url IN ({marks(len(urls))})", urls
    )
    return {row[1]: link_from_row(row) for row in rows}


def find_with_visits(
    conn: sqlite3.Connection, urls: list[str]
) -> dict[str, tuple[InviteLink, Attribution | None]]:
    """`find_by_urls`, each link with the visit it was handed to (None: a campaign
    link, or one not handed out). One statement: a join's commit reads both."""
    if not urls:
        return {}
    rows = conn.execute(
        f"SELECT {_LINK_AND_VISIT} FROM invite_links l LEFT JOIN visits v ON v.id = l.visit_id"
        f" WHERE l.url IN ({marks(len(urls))})",
        urls,
    )
    width = len(_LINK_FIELDS)
    # temp_id is NOT NULL in visits: NULL there means no visit row was joined.
    return {
        row[1]: (
            link_from_row(row),
            Attribution(*row[width:]) if row[width] is not None else None,
        )
        for row in rows
    }


def link_from_row(row: sqlite3.Row) -> InviteLink:
    """The link from a row that starts with LINK_COLUMNS, in that order."""
    return InviteLink(
        id=row[0],
        url=row[1],
        chat_id=row[2],
        kind=row[3],
        name=row[4],
        visit_id=row[5],
        campaign=row[6],
        creates_join_request=bool(row[7]),
        expire_date=row[8],
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
    rows = await db.fetchall(
        f"SELECT {', '.join('l.' + c for c in _LINK_FIELDS)},"
        " count(j.id) AS joins, count(j.id) FILTER (WHERE j.left_at IS NULL) AS present"
        f" FROM invite_links l LEFT JOIN joins j ON j.link_id = l.id"
        f" WHERE l.kind = 'campaign' AND l.chat_id IN ({marks(len(chat_ids))})"
        " GROUP BY l.id ORDER BY l.id",
        chat_ids,
    )
    return [(link_from_row(r), int(r["joins"]), int(r["present"])) for r in rows]
