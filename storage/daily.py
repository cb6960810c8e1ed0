"""Joins and leaves per UTC day, for /chart.

A day is the UTC calendar day of a timestamp (Unix seconds // 86400), as /stats's
"today" is. Joins are told apart exactly as /stats tells them (`join_kind`), and
leaves are the rows /stats counts as "Leaves".

Like /stats, the queries run in a read snapshot of their own (`storage.stats.read`):
they never wait for the bridge's writer, nor hold it (and its ingest) while they scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.db import Database, Transaction
from storage.invite_links import FALLBACK_CAMPAIGN
from storage.sql import marks

# One copy of the read snapshot and of the classification of a join, with /stats.
from storage.stats import attribution_rate, join_kind, read

DAY = 86400


@dataclass(frozen=True, slots=True)
class Day:
    day: int  # days since 1970-01-01 (UTC): the day starts at day * 86400
    attributed: int = 0
    campaign: int = 0  # not counting the fallback link's
    fallback: int = 0
    organic: int = 0
    leaves: int = 0

    @property
    def joins_through_links(self) -> int:
        """Joins through links the bot minted (as StatsRow counts them)."""
        return self.attributed + self.campaign + self.fallback

    @property
    def joins(self) -> int:
        return self.joins_through_links + self.organic

    @property
    def attribution_rate(self) -> float | None:
        return attribution_rate(self.joins_through_links, self.organic)


def utc_day(timestamp: float) -> int:
    return int(timestamp // DAY)


async def daily(db: Database, chat_ids: Sequence[int], first: int, last: int) -> list[Day]:
    """One Day for each UTC day from `first` to `last` (inclusive), zeros included,
    summed over the channels `chat_ids`.

    Rows stamped after `last` (a join Telegram dated past our midnight, clock skew)
    count on `last`, so no recent join is hidden, as with /stats.
    """
    if last < first:
        raise ValueError(f"last day {last} is before the first {first}")
    counts: dict[tuple[int, str], int] = {}
    if chat_ids:
        counts = await read(db, _series, tuple(chat_ids), first)
    days = {day: dict.fromkeys(_FIELDS, 0) for day in range(first, last + 1)}
    for (day, field), count in counts.items():
        days[min(day, last)][field] += count
    return [Day(day, **fields) for day, fields in days.items()]


_FIELDS = ("attributed", "campaign", "fallback", "organic", "leaves")


async def _series(
    tx: Transaction, chat_ids: tuple[int, ...], first: int
) -> dict[tuple[int, str], int]:
    """(day, kind or "leaves") -> count, from day `first` on.

    Joins are read from /stats's covering index (joins_sources), which holds the
    kind and campaign, rather than as a range of joins_chat_time, whose every row
    then needs a table lookup for them. On bench.stats's 1M joins over 60 days
    (`python -m bench.chart --db`), 90 days of the largest channel took 0.15-0.22 s
    against 0.22 s, all five channels 0.59-0.62 s against 0.87 s. The cost, as for
    /stats: the whole of each channel's index is read, not just the period's, so
    on years of joins a 30-day chart costs what /stats "all" does. Leaves are a
    range of their (chat_id, left_at) index.
    """
    since = first * DAY
    params = (*chat_ids, since)
    counts: dict[tuple[int, str], int] = {}
    joins = await tx.fetchall(
        f"SELECT joined_at / {DAY}, kind, campaign = ?, count(*)"
        " FROM joins INDEXED BY joins_sources"
        f" WHERE chat_id IN ({marks(len(chat_ids))}) AND joined_at >= ?"
        " GROUP BY 1, 2, 3",
        (FALLBACK_CAMPAIGN, *params),
    )
    for day, kind, fallback, count in joins:
        key = (int(day), join_kind(kind, FALLBACK_CAMPAIGN if fallback else None))
        counts[key] = counts.get(key, 0) + int(count)
    leaves = await tx.fetchall(
        f"SELECT left_at / {DAY}, count(*) FROM leaves INDEXED BY leaves_chat_time"
        f" WHERE chat_id IN ({marks(len(chat_ids))}) AND left_at >= ? GROUP BY 1",
        params,
    )
    for day, count in leaves:
        counts[(int(day), "leaves")] = int(count)
    return counts
