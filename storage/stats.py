"""Figures for /stats: visits, links, joins, conversions and leaves over a period.

Every query reads one index of migration 004 and never a table row. "All
channels" uses the same indexes: walked channel by channel for a period
(`chat_id IN (SELECT chat_id FROM channels)`), scanned whole for all time. Joins carry their
attribution (utm_source, utm_campaign, campaign), copied at join time, so the
counts per kind and the top sources come from one scan, in the index's order.
Delivered conversions carry AdTarget's answer (dispatched, warning), which
migration 013 put in indexes too.

The queries run in read snapshots of their own, three at once
(`Database.read`): readers never block the writer, so a /stats over a million joins neither waits
for the bridge's connection nor holds it (and its ingest) for the duration. The
three parts may see commits a moment apart; for statistics that is immaterial.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from storage.db import Database, Transaction
from storage.invite_links import FALLBACK_CAMPAIGN, ISSUED_AT

T = TypeVar("T")
P = ParamSpec("P")

TOP_SOURCES = 5
NO_SOURCE = "(none)"  # attributed joins whose visit carried no utm_source
CAMPAIGN_PREFIX = "campaign:"


@dataclass(frozen=True, slots=True)
class SourceRow:
    source: str  # utm_source, "campaign:<name>" for campaign links, "fallback"
    campaign: str | None  # utm_campaign (None for campaign links)
    joins: int
    present: int  # of those joins, members still in the channel

    @property
    def kept(self) -> float:
        """The share of these joins still in the channel (/stats' "kept" column)."""
        return self.present / self.joins if self.joins else 0.0


@dataclass(frozen=True, slots=True)
class StatsRow:
    chat_id: int | None  # None: all channels
    since: float | None  # None: all time
    now: float
    visits: int
    links_issued: int
    joins_attributed: int
    joins_campaign: int  # not counting the fallback link's
    joins_fallback: int  # through the channel's fallback link (a campaign link too)
    joins_organic: int
    conversions_delivered: int
    # Of the delivered: AdTarget's answer, passed on to an ad platform (dispatched) or
    # skipped; the rest are not known (delivered as a replay found through /leads).
    conversions_dispatched: int
    conversions_skipped: int
    conversions_pending: int  # pending + sending
    conversions_parked: int
    leaves: int  # anyone who left in the period, whenever they joined
    still_subscribed: int  # the period's joins (every kind) still in the channel
    top_sources: tuple[SourceRow, ...]
    # AdTarget's most frequent warning on the period's delivered conversions, as
    # AdTarget wrote it, and on how many (None, 0: no warning).
    top_warning: str | None = None
    top_warning_count: int = 0

    @property
    def joins_through_links(self) -> int:
        """Joins through links the bot minted."""
        return self.joins_attributed + self.joins_campaign + self.joins_fallback

    @property
    def joins(self) -> int:
        return self.joins_through_links + self.joins_organic

    @property
    def attribution_rate(self) -> float | None:
        return attribution_rate(self.joins_through_links, self.joins_organic)


def attribution_rate(through_links: int, organic: int) -> float | None:
    """Share of joins that came through links the bot minted (None: no joins);
    /stats' figure and each day of /chart."""
    total = through_links + organic
    return through_links / total if total else None


async def channel_stats(
    db: Database, *, chat_id: int | None, since: float | None, now: float
) -> StatsRow:
    """Figures for one channel (or all, `chat_id=None`) from `since` (None: all time).

    `now` is the moment the figures describe; rows stamped after it (clock skew
    between Telegram and us) still count, so no recent join is ever hidden.
    """
    joins, other, (warning, warned) = await asyncio.gather(
        read(db, _joins, chat_id, since),
        read(db, _other, chat_id, since),
        read(db, _top_warning, chat_id, since),
    )
    return StatsRow(
        chat_id=chat_id,
        since=since,
        now=now,
        visits=other.visits,
        links_issued=other.links,
        joins_attributed=joins.attributed,
        joins_campaign=joins.campaign,
        joins_fallback=joins.fallback,
        joins_organic=joins.organic,
        conversions_delivered=other.delivered,
        conversions_dispatched=other.dispatched,
        conversions_skipped=other.skipped,
        conversions_pending=other.pending,
        conversions_parked=other.parked,
        leaves=other.leaves,
        still_subscribed=joins.present,
        top_sources=joins.sources,
        top_warning=warning,
        top_warning_count=warned,
    )


async def read(
    db: Database,
    query: Callable[Concatenate[Transaction, P], Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run `query` in a read snapshot of its own (`Database.read`), beside the writer.
    Also /chart's (storage/daily.py)."""
    async with db.read() as tx:
        return await query(tx, *args, **kwargs)


# Every channel, as one seek per channel: a period is then a range in each. (All
# rows belong to known channels: joins and links by foreign key, and conversions
# and leaves are only recorded for channels the bridge registered first.)
_ALL_CHATS = "chat_id IN (SELECT chat_id FROM channels)"


def _where(
    chat_id: int | None,
    since: float | None,
    time_expr: str,
    *extra: str,
    scan_all: bool = True,
) -> tuple[str, list[object]]:
    """A WHERE clause: fixed terms, the channel (or every channel), the period.

    With `scan_all`, all channels over all time take no channel term: a plain scan
    of the whole index is cheaper than walking it channel by channel. (Not for an
    index whose next column after chat_id is an equality term, like a state.)
    """
    terms = list(extra)
    params: list[object] = []
    if chat_id is None:
        if since is not None or not scan_all:
            terms.append(_ALL_CHATS)
    else:
        terms.append("chat_id = ?")
        params.append(chat_id)
    if since is not None:
        terms.append(f"{time_expr} >= ?")
        params.append(since)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


async def _count(tx: Transaction, sql: str, params: Sequence[object]) -> int:
    row = await tx.fetchone(sql, tuple(params))
    return int(row[0] or 0) if row else 0


def join_kind(kind: str, campaign: str | None) -> str:
    """How a join is shown: its stored kind (attributed, campaign, organic), except
    that a join through the channel's fallback link is "fallback". It is a campaign
    join by kind (and in the outbox), shown apart: these are visitors who could not
    have a personal link."""
    if kind == "campaign" and campaign == FALLBACK_CAMPAIGN:
        return FALLBACK_CAMPAIGN
    return kind


@dataclass(frozen=True, slots=True)
class _Joins:
    attributed: int
    campaign: int
    fallback: int
    organic: int
    present: int
    sources: tuple[SourceRow, ...]


async def _joins(tx: Transaction, chat_id: int | None, since: float | None) -> _Joins:
    """Joins per kind, those still present, and the top sources.

    Grouped per channel in the order of joins_sources, so the scan needs no sort;
    the few groups are then merged across channels here.
    """
    where, params = _where(chat_id, since, "joined_at")
    rows = await tx.fetchall(
        "SELECT kind, utm_source, utm_campaign, campaign, count(*), count(left_at)"
        f" FROM joins INDEXED BY joins_sources{where}"
        " GROUP BY chat_id, kind, utm_source, utm_campaign, campaign",
        params,
    )
    per_kind = {"attributed": 0, "campaign": 0, "fallback": 0, "organic": 0}
    present = 0
    sources: dict[tuple[str, str | None], list[int]] = {}
    for stored_kind, utm_source, utm_campaign, campaign, joined, left in rows:
        kind = join_kind(stored_kind, campaign)
        per_kind[kind] = per_kind.get(kind, 0) + joined
        present += joined - left
        if kind == "attributed":
            key = (utm_source or NO_SOURCE, utm_campaign)
        elif kind == FALLBACK_CAMPAIGN:
            key = (FALLBACK_CAMPAIGN, None)
        elif kind == "campaign":
            key = (f"{CAMPAIGN_PREFIX}{campaign or ''}", None)
        else:
            continue
        counts = sources.setdefault(key, [0, 0])
        counts[0] += joined
        counts[1] += joined - left
    ranked = sorted(sources.items(), key=lambda item: (-item[1][0], item[0][0], item[0][1] or ""))
    return _Joins(
        attributed=per_kind["attributed"],
        campaign=per_kind["campaign"],
        fallback=per_kind["fallback"],
        organic=per_kind["organic"],
        present=present,
        sources=tuple(
            SourceRow(source=source, campaign=campaign, joins=joined, present=kept)
            for (source, campaign), (joined, kept) in ranked[:TOP_SOURCES]
        ),
    )


@dataclass(frozen=True, slots=True)
class _Other:
    visits: int
    links: int
    delivered: int
    dispatched: int
    skipped: int
    pending: int
    parked: int
    leaves: int


# The terms of the partial index invite_links_issued (on ISSUED_AT), verbatim.
_ISSUED = ("kind = 'visitor'", "visit_id IS NOT NULL")
# The terms of the partial index outbox_warnings (migration 013), verbatim.
_WARNED = ("kind = 'conversion'", "warning IS NOT NULL")


async def _other(tx: Transaction, chat_id: int | None, since: float | None) -> _Other:
    visits, links = await _links(tx, chat_id, since)
    # event_time_ms is the join's time (joined_at * 1000): compare in milliseconds so
    # the index range applies. One range count per state.
    ms = None if since is None else since * 1000

    async def conversions(state: str, counts: str = "count(*)") -> list[int]:
        where, params = _where(
            chat_id, ms, "event_time_ms", "kind = 'conversion'", state, scan_all=False
        )
        row = await tx.fetchone(
            f"SELECT {counts} FROM outbox INDEXED BY outbox_conversions{where}", params
        )
        assert row is not None  # aggregates always answer
        return [int(value or 0) for value in row]

    # dispatched is 1, 0 or NULL (not known): one walk of the delivered range splits it
    # (plain aggregates: a comparison per row costs more over a million).
    delivered, known, dispatched = await conversions(
        "state = 'delivered'", "count(*), count(dispatched), coalesce(sum(dispatched), 0)"
    )
    where, params = _where(chat_id, since, "left_at")
    return _Other(
        visits=visits,
        links=links,
        delivered=delivered,
        dispatched=dispatched,
        skipped=known - dispatched,
        pending=(await conversions("state IN ('pending', 'sending')"))[0],
        parked=(await conversions("state = 'parked'"))[0],
        leaves=await _count(
            tx, f"SELECT count(*) FROM leaves INDEXED BY leaves_chat_time{where}", params
        ),
    )


async def _top_warning(
    tx: Transaction, chat_id: int | None, since: float | None
) -> tuple[str | None, int]:
    """AdTarget's most frequent warning and its count (ties: the first by text).

    Grouped per channel in the order of outbox_warnings, so the scan needs no sort;
    the groups (a few distinct texts) are merged across channels here. The scan
    covers a channel's warned conversions of all time (the period is no range in
    this order): only conversions AdTarget warned about are in the index.
    """
    ms = None if since is None else since * 1000  # event_time_ms, as in _other
    where, params = _where(chat_id, ms, "event_time_ms", *_WARNED)
    rows = await tx.fetchall(
        f"SELECT warning, count(*) FROM outbox INDEXED BY outbox_warnings{where}"
        " GROUP BY chat_id, warning",
        params,
    )
    counts: dict[str, int] = {}
    for warning, count in rows:
        counts[warning] = counts.get(warning, 0) + int(count)
    if not counts:
        return None, 0
    warning, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return warning, count


async def _links(tx: Transaction, chat_id: int | None, since: float | None) -> tuple[int, int]:
    """(visits, links issued): distinct visitors given a link there, or all visits."""
    where, params = _where(chat_id, since, ISSUED_AT, *_ISSUED)
    table = "invite_links INDEXED BY invite_links_issued"
    if chat_id is not None:
        row = await tx.fetchone(
            f"SELECT count(DISTINCT visit_id), count(*) FROM {table}{where}", params
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)
    links = await _count(tx, f"SELECT count(*) FROM {table}{where}", params)
    if since is None:
        visits = await _count(tx, "SELECT count(*) FROM visits", ())
    else:
        visits = await _count(
            tx,
            "SELECT count(*) FROM visits INDEXED BY visits_created WHERE created_at >= ?",
            (since,),
        )
    return visits, links
