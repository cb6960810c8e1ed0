"""What the bridge holds for one Telegram user: joins with their link and visit,
leaves, join requests and outbox rows (the bridge's half of /lead).

`chat_ids` limits every read to those channels (a channel admin's own);
None reads them all (the bridge's admins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.db import Database
from storage.sql import marks


@dataclass(frozen=True, slots=True)
class LeadJoin:
    """A join as the bridge recorded it for this user (bot/joins' `JoinSeen` is
    one as a handler read it off an update)."""

    chat_id: int
    kind: str  # attributed | campaign | organic
    joined_at: int  # Telegram's date, seconds
    left_at: int | None
    via_join_request: bool
    link_url: str | None
    campaign: str | None
    # The visit behind a visitor link (attributed joins only).
    temp_id: str | None
    visited_at: float | None
    utm_source: str | None
    signals: tuple[str, ...]  # which of fbc, fbp, gclid, ttclid, sccid the visit carried


@dataclass(frozen=True, slots=True)
class LeadLeave:
    chat_id: int
    left_at: int


@dataclass(frozen=True, slots=True)
class LeadJoinRequest:
    chat_id: int
    requested_at: int
    state: str
    last_error: str | None


@dataclass(frozen=True, slots=True)
class LeadOutboxRow:
    id: int
    kind: str
    state: str
    chat_id: int | None
    event_type: str | None
    attempts: int
    created_at: float
    delivered_at: float | None
    conversion_id: str | None
    problem: str | None  # parked reason, or the last error while still pending
    # AdTarget's answer to a delivered conversion or event: passed on to an ad
    # platform or skipped (None: not known), and its warning.
    dispatched: bool | None
    warning: str | None


@dataclass(frozen=True, slots=True)
class BridgeLead:
    joins: list[LeadJoin]
    leaves: list[LeadLeave]
    requests: list[LeadJoinRequest]
    outbox: list[LeadOutboxRow]

    @property
    def empty(self) -> bool:
        return not (self.joins or self.leaves or self.requests or self.outbox)

    @property
    def chat_ids(self) -> list[int]:
        """Channels this user joined (or asked to), most recent first."""
        ordered = sorted(
            [(j.joined_at, j.chat_id) for j in self.joins]
            + [(r.requested_at, r.chat_id) for r in self.requests],
            reverse=True,
        )
        return list(dict.fromkeys(chat for _, chat in ordered))


_SIGNALS = ("fbc", "fbp", "gclid", "ttclid", "sccid")


def _within(column: str, chat_ids: Sequence[int] | None) -> tuple[str, list[Any]]:
    if chat_ids is None:
        return "", []
    if not chat_ids:
        return " AND 0", []
    return f" AND {column} IN ({marks(len(chat_ids))})", list(chat_ids)


async def bridge_lead(
    db: Database, user_id: int, chat_ids: Sequence[int] | None = None, *, limit: int = 20
) -> BridgeLead:
    """The user's newest `limit` joins, leaves, requests and outbox rows."""
    where, scope = _within("j.chat_id", chat_ids)
    signal_columns = ", ".join(f"v.{name}" for name in _SIGNALS)
    join_rows = await db.fetchall(
        "SELECT j.chat_id, j.kind, j.joined_at, j.left_at, j.via_join_request, j.link_url,"
        " coalesce(j.campaign, l.campaign) AS campaign, v.temp_id, v.created_at AS visited_at,"
        f" coalesce(j.utm_source, v.utm_source) AS utm_source, {signal_columns}"
        " FROM joins j LEFT JOIN invite_links l ON l.id = j.link_id"
        " LEFT JOIN visits v ON v.id = l.visit_id"
        f" WHERE j.user_id = ?{where} ORDER BY j.joined_at DESC, j.id DESC LIMIT ?",
        (user_id, *scope, limit),
    )
    joins = [
        LeadJoin(
            chat_id=int(r["chat_id"]),
            kind=r["kind"],
            joined_at=int(r["joined_at"]),
            left_at=r["left_at"],
            via_join_request=bool(r["via_join_request"]),
            link_url=r["link_url"],
            campaign=r["campaign"],
            temp_id=r["temp_id"],
            visited_at=r["visited_at"],
            utm_source=r["utm_source"],
            signals=tuple(name for name in _SIGNALS if r[name]),
        )
        for r in join_rows
    ]
    where, scope = _within("chat_id", chat_ids)
    leave_rows = await db.fetchall(
        f"SELECT chat_id, left_at FROM leaves WHERE user_id = ?{where}"
        " ORDER BY left_at DESC LIMIT ?",
        (user_id, *scope, limit),
    )
    request_rows = await db.fetchall(
        "SELECT chat_id, requested_at, state, last_error FROM join_requests"
        f" WHERE user_id = ?{where} ORDER BY requested_at DESC LIMIT ?",
        (user_id, *scope, limit),
    )
    outbox_rows = await db.fetchall(
        "SELECT id, kind, state, chat_id, event_type, attempts, created_at, delivered_at,"
        " conversion_id, dispatched, warning,"
        " CASE WHEN state = 'parked' THEN coalesce(parked_reason, last_error)"
        " WHEN state != 'delivered' THEN last_error END AS problem"
        f" FROM outbox WHERE telegram_user_id = ?{where} ORDER BY id DESC LIMIT ?",
        (user_id, *scope, limit),
    )
    return BridgeLead(
        joins=joins,
        leaves=[LeadLeave(int(r["chat_id"]), int(r["left_at"])) for r in leave_rows],
        requests=[
            LeadJoinRequest(int(r["chat_id"]), int(r["requested_at"]), r["state"], r["last_error"])
            for r in request_rows
        ],
        outbox=[
            LeadOutboxRow(
                id=int(r["id"]),
                kind=r["kind"],
                state=r["state"],
                chat_id=r["chat_id"],
                event_type=r["event_type"],
                attempts=int(r["attempts"]),
                created_at=float(r["created_at"]),
                delivered_at=r["delivered_at"],
                conversion_id=r["conversion_id"],
                problem=r["problem"],
                dispatched=None if r["dispatched"] is None else bool(r["dispatched"]),
                warning=r["warning"],
            )
            for r in outbox_rows
        ],
    )


async def channels_joined(db: Database, user_id: int, chat_ids: Sequence[int]) -> list[int]:
    """Which of `chat_ids` this user ever joined or asked to join, most recent first
    (the test of whether a channel admin may act on this user)."""
    if not chat_ids:
        return []
    where, scope = _within("chat_id", chat_ids)
    rows = await db.fetchall(
        "SELECT chat_id, max(at) FROM ("
        f" SELECT chat_id, joined_at AS at FROM joins WHERE user_id = ?{where}"
        " UNION ALL"
        f" SELECT chat_id, requested_at AS at FROM join_requests WHERE user_id = ?{where}"
        ") AS joined GROUP BY chat_id ORDER BY max(at) DESC",
        (user_id, *scope, user_id, *scope),
    )
    return [int(r[0]) for r in rows]
