"""Invite links the bot minted, and the lookup from a join's link back to them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.db import Database, Row, Transaction
from storage.sql import marks
from storage.visits import ATTRIBUTION_COLUMNS, Attribution

# The campaign name reserved for a channel's fallback link: the campaign link a
# visitor is sent to when no personal link can be had (past the client's quota, or
# the pool empty while Telegram says wait). Its joins are campaign joins by kind,
# counted apart as "fallback" in /stats.
FALLBACK_CAMPAIGN = "fallback"
# When a visitor link was given out: a pool link when assigned, one minted on
# demand when created. The expression of the indexes invite_links_issued and
# invite_links_client, verbatim.
ISSUED_AT = "coalesce(assigned_at, created_at)"


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

    @property
    def fallback(self) -> bool:
        """The channel's fallback link (a campaign link under the reserved name)."""
        return self.kind == "campaign" and self.campaign == FALLBACK_CAMPAIGN


LINK_COLUMNS = "id, url, chat_id, kind, name, visit_id, campaign, creates_join_request, expire_date"
_LINK_FIELDS = [c.strip() for c in LINK_COLUMNS.split(",")]
_LINK_AND_VISIT = ", ".join(
    [f"l.{c}" for c in _LINK_FIELDS] + [f"v.{c}" for c in ATTRIBUTION_COLUMNS]
)


async def insert(
    tx: Transaction,
    *,
    url: str,
    chat_id: int,
    kind: str,
    name: str,
    visit_id: int | None,
    campaign: str | None,
    creates_join_request: bool,
    expire_date: int | None,
    client_key: str | None = None,
) -> InviteLink:
    """`client_key`: the client a visitor link is handed to, for its quota."""
    row = await tx.fetchone(
        "INSERT INTO invite_links (url, chat_id, kind, name, visit_id, campaign,"
        " creates_join_request, expire_date, created_at, client_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
            client_key,
        ),
    )
    assert row is not None
    return InviteLink(
        int(row[0]), url, chat_id, kind, name, visit_id, campaign, creates_join_request, expire_date
    )


async def find_by_urls(tx: Transaction, urls: list[str]) -> dict[str, InviteLink]:
    """Links we minted, by the URLs Telegram reported on joins (absent: not ours)."""
    if not urls:
        return {}
    rows = await tx.fetchall(
        f"SELECT {LINK_COLUMNS} FROM invite_links WHERE url IN ({marks(len(urls))})", urls
    )
    return {row[1]: link_from_row(row) for row in rows}


async def find_with_visits(
    tx: Transaction, urls: list[str]
) -> dict[str, tuple[InviteLink, Attribution | None]]:
    """`find_by_urls`, each link with the visit it was handed to (None: a campaign
    link, or one not handed out). One statement: a join's commit reads both."""
    if not urls:
        return {}
    rows = await tx.fetchall(
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


def link_from_row(row: Row) -> InviteLink:
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


async def mark_used(tx: Transaction, link_ids: list[int]) -> None:
    now = time.time()
    await tx.executemany(
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


# A fallback link that still works: not revoked by us, not expired (campaign links
# are minted without an expiry; the term keeps one edited in Telegram out).
_LIVE_FALLBACK = (
    f"kind = 'campaign' AND campaign = '{FALLBACK_CAMPAIGN}' AND revoked_at IS NULL"
    " AND (expire_date IS NULL OR expire_date > ?)"
)


async def find_fallback(
    tx: Transaction, *, chat_id: int, creates_join_request: bool
) -> InviteLink | None:
    """The channel's live fallback link for its mode, the newest if there are several
    (read through invite_links_campaign: a flood of refused visitors reads it)."""
    row = await tx.fetchone(
        f"SELECT {LINK_COLUMNS} FROM invite_links WHERE chat_id = ? AND {_LIVE_FALLBACK}"
        " AND creates_join_request = ? ORDER BY id DESC LIMIT 1",
        (chat_id, time.time(), int(creates_join_request)),
    )
    return link_from_row(row) if row else None


async def fallbacks(db: Database) -> dict[tuple[int, bool], InviteLink]:
    """Every live fallback link by (chat, join-request mode); the newest of several.
    Read on every pass of the pool's upkeep: from the campaign links' index alone,
    never a scan of the whole table."""
    rows = await db.fetchall(
        f"SELECT {LINK_COLUMNS} FROM invite_links INDEXED BY invite_links_campaign"
        f" WHERE {_LIVE_FALLBACK} ORDER BY id",
        (time.time(),),
    )
    return {(link.chat_id, link.creates_join_request): link for link in map(link_from_row, rows)}
