"""Stats: how long /stats takes to compute on a large database.

Seeds a fresh database (all migrations applied) with N joins and M visits over
60 days in 5 channels of unequal size -- 80% attributed joins (each through a
visitor link given to a visit), 5% campaign, 15% organic; 10% of members left;
a conversion row, mostly delivered (30% of those skipped by AdTarget with a
warning), per attributed and campaign join -- then
times `channel_stats` for the largest channel and for all channels, per period.

    python -m bench.stats [--joins 1000000] [--visits 1000000] [--runs 5] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import summary
from bot.admin.stats import PERIODS, period_start
from bot.simulators.adtarget_rules import NO_SIGNAL_WARNING
from storage.db import open_database
from storage.stats import channel_stats

TARGET_MS = 300.0
SPAN = 60 * 86400
CHANNELS = 5
CHAT_BASE = -1001000000000
CAMPAIGN_LINKS = 15  # 3 per channel

# The channel (0..4) for a number: shares 40%, 25%, 15%, 12%, 8%.
_CHAT_INDEX = (
    "(CASE WHEN ({x}) % 100 < 40 THEN 0 WHEN ({x}) % 100 < 65 THEN 1"
    " WHEN ({x}) % 100 < 80 THEN 2 WHEN ({x}) % 100 < 92 THEN 3 ELSE 4 END)"
)


def chat_id(index: int) -> int:
    return CHAT_BASE - index


def _chat(x: str) -> str:
    return f"({CHAT_BASE} - {_CHAT_INDEX.format(x=x)})"


_UTM_SOURCE = (
    "(CASE WHEN ({x}) % 10 < 4 THEN 'facebook' WHEN ({x}) % 10 < 7 THEN 'google'"
    " WHEN ({x}) % 10 < 9 THEN 'tiktok' ELSE NULL END)"
)
_UTM_CAMPAIGN = "('spring-' || (({x}) % 7))"


def seed(path: Path, *, joins: int, visits: int, now: float) -> None:
    attributed = (joins // 100) * 80 + min(joins % 100, 80)
    if attributed > visits:
        raise SystemExit(f"--visits must be at least {attributed} (one per attributed join)")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO channels (chat_id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
            [(chat_id(i), f"Channel {i}", now - SPAN, now - SPAN) for i in range(CHANNELS)],
        )
        # Visits, one a second-ish across the span; ids grow with time.
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :v)"
            " INSERT INTO visits (id, temp_id, utm_source, utm_campaign, created_at, updated_at)"
            f" SELECT i, 'tmp-' || i, {_UTM_SOURCE.format(x='i')},"
            f" {_UTM_CAMPAIGN.format(x='i')}, :t0 + :span * i / :v, :t0 + :span * i / :v FROM n",
            {"v": visits, "t0": now - SPAN, "span": SPAN},
        )
        # A visitor link per visit: half from the pool (minted an hour before, then
        # assigned), half minted on demand.
        conn.execute(
            "INSERT INTO invite_links (id, url, chat_id, kind, name, visit_id, created_at,"
            " assigned_at, used_at)"
            f" SELECT id, 'https://t.me/+v' || id, {_chat('id')}, 'visitor', 'v' || id, id,"
            " CASE WHEN id % 2 = 0 THEN created_at - 3600 ELSE created_at END,"
            " CASE WHEN id % 2 = 0 THEN created_at END, NULL FROM visits"
        )
        conn.executemany(
            "INSERT INTO invite_links (id, url, chat_id, kind, name, campaign, created_at)"
            " VALUES (?, ?, ?, 'campaign', ?, ?, ?)",
            [
                (
                    visits + 1 + c,
                    f"https://t.me/+c{c}",
                    chat_id(c % CHANNELS),
                    f"promo {c}",
                    f"promo-{c // CHANNELS}",
                    now - SPAN,
                )
                for c in range(CAMPAIGN_LINKS)
            ],
        )
        # Joins: j % 100 < 80 attributed (its own visitor link, spread so the k-th
        # attributed join takes visit 1 + k * visits / attributed), < 85 campaign,
        # else organic.
        conn.execute(
            "WITH RECURSIVE n(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM n WHERE j < :n - 1),"
            " k(j, kind, link) AS (SELECT j,"
            "  CASE WHEN j % 100 < 80 THEN 'attributed' WHEN j % 100 < 85 THEN 'campaign'"
            "  ELSE 'organic' END,"
            "  CASE WHEN j % 100 < 80 THEN 1 + ((j / 100) * 80 + j % 100) * :v / :a"
            "  WHEN j % 100 < 85 THEN :v + 1 + j % :c END FROM n),"
            " t(j, kind, link, at) AS (SELECT j, kind, link,"
            "  CAST(min(:now, CASE WHEN kind = 'attributed'"
            "  THEN :t0 + :span * link / :v + link % 600"
            "  ELSE :t0 + :span * j / :n END) AS INTEGER) FROM k)"
            " INSERT INTO joins (id, chat_id, user_id, kind, link_id, link_url, joined_at,"
            " left_at, created_at, utm_source, utm_campaign, campaign)"
            " SELECT j + 1,"
            f" CASE kind WHEN 'attributed' THEN {_chat('link')}"
            f"  WHEN 'campaign' THEN {CHAT_BASE} - (link - :v - 1) % {CHANNELS}"
            f"  ELSE {_chat('j')} END,"
            " 1000000 + j, kind, link,"
            " CASE WHEN kind = 'organic' THEN NULL ELSE 'https://t.me/+x' END, at,"
            " CASE WHEN j % 10 = 3 THEN min(CAST(:now AS INTEGER), at + 3600 * (j % 48 + 1)) END,"
            " at,"
            f" CASE kind WHEN 'attributed' THEN {_UTM_SOURCE.format(x='link')} END,"
            f" CASE kind WHEN 'attributed' THEN {_UTM_CAMPAIGN.format(x='link')} END,"
            f" CASE kind WHEN 'campaign' THEN 'promo-' || ((link - :v - 1) / {CHANNELS}) END"
            " FROM t",
            {
                "n": joins,
                "v": visits,
                "a": max(attributed, 1),
                "c": CAMPAIGN_LINKS,
                "now": now,
                "t0": now - SPAN,
                "span": SPAN,
            },
        )
        conn.execute(
            "INSERT INTO leaves (chat_id, user_id, left_at)"
            " SELECT chat_id, user_id, left_at FROM joins WHERE left_at IS NOT NULL"
        )
        # Conversions: 2% pending, 0.5% sending, 0.5% parked, the rest delivered. Of the
        # delivered, AdTarget skipped 30% with a warning (1 in 10 of them another text).
        conn.execute(
            "INSERT INTO outbox (kind, path, body, idempotency_key, join_id, telegram_user_id,"
            " chat_id, event_type, event_time_ms, state, attempts, next_attempt_at, created_at,"
            " delivered_at, priority, dispatched, warning)"
            " SELECT 'conversion', '/events/conversion', '{}', 'conv-' || id, id, user_id,"
            " chat_id, 'subscribe', joined_at * 1000,"
            " CASE WHEN id % 200 < 4 THEN 'pending' WHEN id % 200 = 4 THEN 'sending'"
            " WHEN id % 200 = 5 THEN 'parked' ELSE 'delivered' END, 1, joined_at, joined_at,"
            " CASE WHEN id % 200 > 5 THEN joined_at + 1 END, 0,"
            " CASE WHEN id % 200 > 5 THEN id % 10 >= 3 END,"
            " CASE WHEN id % 200 > 5 AND id % 10 < 3 THEN CASE WHEN id % 100 = 1"
            f" THEN 'Pixel paused' ELSE '{NO_SIGNAL_WARNING}' END END"
            " FROM joins WHERE kind != 'organic'"
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


async def measure(path: Path, *, runs: int, now: float) -> list[tuple[str, str, list[float]]]:
    db = await open_database(path)
    results: list[tuple[str, str, list[float]]] = []
    try:
        for scope, chat in (("one channel", chat_id(0)), ("all channels", None)):
            for period in PERIODS:
                since = period_start(period, now)
                timings: list[float] = []
                for _ in range(runs):
                    started = time.perf_counter()
                    await channel_stats(db, chat_id=chat, since=since, now=now)
                    timings.append((time.perf_counter() - started) * 1000)
                results.append((scope, period, timings))
        row = await channel_stats(db, chat_id=None, since=None, now=now)
        print(
            f"all/all: visits {row.visits:,}, links {row.links_issued:,}, joins {row.joins:,}"
            f" ({row.joins_attributed:,} attributed, {row.joins_campaign:,} campaign,"
            f" {row.joins_organic:,} organic), conversions {row.conversions_delivered:,}"
            f" delivered / {row.conversions_pending:,} pending / {row.conversions_parked:,}"
            f" parked ({row.conversions_dispatched:,} to ad platforms,"
            f" {row.conversions_skipped:,} skipped, {row.top_warning_count:,} warned"
            f" {row.top_warning!r}), leaves {row.leaves:,},"
            f" still subscribed {row.still_subscribed:,}"
        )
    finally:
        await db.close()
    return results


async def create(path: Path) -> None:
    db = await open_database(path)  # creates the file and applies the migrations
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=1_000_000)
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--db", type=Path, help="seed (or reuse, if it exists) this file")
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path: Path = args.db or Path(tmp) / "stats.db"
        if not path.exists():
            asyncio.run(create(path))
            started = time.monotonic()
            seed(path, joins=args.joins, visits=args.visits, now=now)
            seconds = time.monotonic() - started
            print(f"seeded {args.joins:,} joins and {args.visits:,} visits in {seconds:.1f} s")
        else:
            now = _seeded_now(path)
        results = asyncio.run(measure(path, runs=args.runs, now=now))
    print(f"\n{'scope':<13} {'period':<6} {'median':>8} {'min':>8} {'max':>8}  target")
    for scope, period, timings in results:
        median, low, high = summary(timings)
        verdict = "met" if median < TARGET_MS and high < TARGET_MS else "MISSED"
        print(
            f"{scope:<13} {period:<6} {median:>6.1f}ms {low:>6.1f}ms {high:>6.1f}ms"
            f"  < {TARGET_MS:.0f} ms {verdict}"
        )
    print(f"({args.runs} runs each; 'met' = median and max under the target)")


def _seeded_now(path: Path) -> float:
    """A reused database: its newest visit stands in for the moment it was seeded."""
    with sqlite3.connect(path) as conn:
        found = conn.execute("SELECT max(created_at) FROM visits").fetchone()[0]
    return float(found) if found is not None else time.time()


if __name__ == "__main__":
    main()
