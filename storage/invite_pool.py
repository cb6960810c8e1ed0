"""Pre-minted invite links waiting for a visitor, their assignment and revocation."""

from __future__ import annotations

import time

from storage.db import Database, Transaction
from storage.invite_links import ISSUED_AT, LINK_COLUMNS, InviteLink, link_from_row

# Pool links this close to expiry are not handed out: a visitor needs time to join.
_USABLE = "visit_id IS NULL AND kind = 'visitor' AND discarded_at IS NULL AND revoked_at IS NULL"


async def add(
    db: Database,
    *,
    url: str,
    chat_id: int,
    name: str,
    creates_join_request: bool,
    expire_date: int,
) -> None:
    # The upkeep writes while joins arrive: one statement, one round trip, keeps
    # the writer free for them.
    await db.execute(
        "INSERT INTO invite_links (url, chat_id, kind, name, creates_join_request,"
        " expire_date, created_at) VALUES (?, ?, 'visitor', ?, ?, ?, ?)",
        (url, chat_id, name, int(creates_join_request), expire_date, time.time()),
    )


async def sizes(db: Database, *, usable_after: float) -> dict[tuple[int, bool], int]:
    """Usable pool links per (chat, join-request mode)."""
    rows = await db.fetchall(
        f"SELECT chat_id, creates_join_request, count(*) FROM invite_links"
        f" WHERE {_USABLE} AND expire_date > ? GROUP BY chat_id, creates_join_request",
        (usable_after,),
    )
    return {(int(r[0]), bool(r[1])): int(r[2]) for r in rows}


async def find_assigned(
    tx: Transaction, *, visit_id: int, chat_id: int, usable_after: float
) -> InviteLink | None:
    """The visitor's link in this channel while it can still be used."""
    row = await tx.fetchone(
        f"SELECT {LINK_COLUMNS} FROM invite_links WHERE visit_id = ? AND chat_id = ?"
        " AND kind = 'visitor' AND used_at IS NULL AND revoked_at IS NULL AND expire_date > ?"
        " ORDER BY id DESC LIMIT 1",
        (visit_id, chat_id, usable_after),
    )
    return link_from_row(row) if row else None


# Personal links of a channel handed to a client since a time: a range of
# invite_links_client, a handful of entries per client.
_HANDED_TO = (
    "SELECT count(*) FROM invite_links WHERE client_key = :client AND chat_id = :chat"
    f" AND {ISSUED_AT} >= :since"
)


async def take(
    tx: Transaction,
    *,
    chat_id: int,
    creates_join_request: bool,
    visit_id: int,
    client_key: str,
    quota: tuple[int, float],
    usable_after: float,
) -> InviteLink | None:
    """Assign the pool link that expires soonest (but not too soon) to a visit,
    handed to `client_key`, unless that client already had `quota` = (links,
    since) of this channel's. None: the pool is empty, or the quota reached (ask
    `handed_to`). One statement: the quota costs the common path no round trip."""
    limit, since = quota
    # SKIP LOCKED (PostgreSQL): under READ COMMITTED, two processes' subqueries
    # could pick the same free link; the second UPDATE would wait for the first,
    # then re-check only `id = …`, not `visit_id IS NULL`, and hand that link
    # out again. Locking the pick and passing over links another transaction
    # holds closes that gap. Today storage/postgres.py's WRITE_LOCK already runs
    # every writing transaction one at a time; this keeps `take` correct if that
    # lock is ever made lighter.
    row = await tx.fetchone(
        f"UPDATE invite_links SET visit_id = :visit, assigned_at = :now, client_key = :client"
        f" WHERE id = (SELECT id FROM invite_links WHERE {_USABLE} AND chat_id = :chat"
        f" AND creates_join_request = :mode AND expire_date > :usable_after"
        f" ORDER BY expire_date, id LIMIT 1{tx.dialect.skip_locked})"
        f" AND ({_HANDED_TO}) < :limit"
        f" RETURNING {LINK_COLUMNS}",
        {
            "visit": visit_id,
            "now": time.time(),
            "client": client_key,
            "chat": chat_id,
            "mode": int(creates_join_request),
            "usable_after": usable_after,
            "since": since,
            "limit": limit,
        },
    )
    return link_from_row(row) if row else None


async def handed_to(tx: Transaction, *, chat_id: int, client_key: str, since: float) -> int:
    """Personal links of this channel handed to this client since `since`."""
    row = await tx.fetchone(_HANDED_TO, {"client": client_key, "chat": chat_id, "since": since})
    assert row is not None  # an aggregate always answers
    return int(row[0])


async def forget_clients(db: Database, *, before: float) -> int:
    """Clear the client of links handed out before `before`: the quota no longer
    looks at them, and the address is personal data kept for nothing after that."""
    return await db.execute(
        f"UPDATE invite_links SET client_key = NULL"
        f" WHERE client_key IS NOT NULL AND {ISSUED_AT} < ?",
        (before,),
    )


async def discard_stale(db: Database, *, usable_after: float) -> int:
    """Drop pool links near expiry, and those minted for the channel's other mode."""
    return await db.execute(
        f"UPDATE invite_links SET discarded_at = ? WHERE {_USABLE} AND (expire_date <= ?"
        " OR creates_join_request != (SELECT CASE mode WHEN 'request' THEN 1 ELSE 0 END"
        " FROM channels"
        " WHERE channels.chat_id = invite_links.chat_id))",
        (time.time(), usable_after),
    )


async def to_revoke(db: Database, *, limit: int) -> list[tuple[int, int, str]]:
    """(link id, chat id, url) of personal links used by their visitor, not yet revoked."""
    rows = await db.fetchall(
        "SELECT id, chat_id, url FROM invite_links WHERE used_at IS NOT NULL"
        " AND revoked_at IS NULL AND kind = 'visitor' ORDER BY used_at LIMIT ?",
        (limit,),
    )
    return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]


async def mark_revoked(db: Database, link_id: int) -> None:
    await db.execute("UPDATE invite_links SET revoked_at = ? WHERE id = ?", (time.time(), link_id))
