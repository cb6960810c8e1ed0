"""/chart's cost: the bridge's start and memory (matplotlib is not loaded for them),
and what drawing one chart takes.

Each run starts `python -m bot` against the loopback simulators (bench.flows.stage)
with an empty database and measures:

- start: seconds from spawning the process to its first getUpdates (ready);
- RSS after start: VmRSS once the channel is tracked and the process has idled 2 s.

Then, where the tree has /chart, it seeds --joins joins (and a tenth as many
leaves) over 90 days into the bridge's database and asks /chart 90d as ADMIN_IDS:

- first chart: seconds from the message to the bot's sendPhoto (matplotlib is
  imported then), and VmRSS / VmHWM after it;
- next chart: the same again, matplotlib already loaded;
- chart 10: the tenth in a row, and the RSS then (where the memory settles).

Last, in this process, bot.admin.chart.render alone over 90 days (no database).

    python -m bench.chart [--runs 5] [--joins 100000] [--tree PATH]
    python -m bench.chart --db PATH  # only the daily series, on a bench.stats database

--tree runs the bridge from another checkout, for a before/after comparison:
    git archive <commit> | tar -x -C /tmp/before; python -m bench.chart --tree /tmp/before
Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from pathlib import Path

from bench.common import summary
from bench.flows import stage
from tests.harness import CHANNEL_ID, OWNER, ROOT

DAY = 86400
SETTLE = 2.0
CHARTS = 10  # one after another: does the memory settle?


def seed(db: Path, joins: int, now: float) -> None:
    """Joins of every kind and leaves over the last 90 days, written beside the
    running bridge (WAL: its own connection is not held up for long)."""
    rng = random.Random(18)
    kinds = ("attributed",) * 70 + ("campaign",) * 10 + ("fallback",) * 5 + ("organic",) * 15
    rows = []
    for i in range(joins):
        kind = rng.choice(kinds)
        campaign = {"campaign": "promo", "fallback": "fallback"}.get(kind)
        rows.append(
            (
                CHANNEL_ID,
                900_000_000 + i,
                "campaign" if kind == "fallback" else kind,
                int(now - rng.random() * 90 * DAY),
                now,
                campaign,
            )
        )
    leaves = [
        (CHANNEL_ID, 900_000_000 + i, int(now - rng.random() * 90 * DAY))
        for i in range(0, joins, 10)
    ]
    with sqlite3.connect(db, timeout=30) as conn:
        # link_id NULL for every kind: /chart reads the kind and campaign only.
        conn.executemany(
            "INSERT INTO joins (chat_id, user_id, kind, joined_at, created_at, campaign)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany("INSERT INTO leaves (chat_id, user_id, left_at) VALUES (?, ?, ?)", leaves)


async def one_run(tree: Path, joins: int, with_chart: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with stage("bot", admin_ids=OWNER, pythonpath=tree) as s:
        figures["start s"] = s.telegram.calls_to("getUpdates")[0].at - s.started_at
        await asyncio.sleep(SETTLE)
        figures["RSS after start MB"] = s.process.rss_mb()
        figures["peak RSS after start MB"] = s.process.peak_rss_mb()
        if not with_chart:
            return figures
        await asyncio.to_thread(seed, s.db, joins, time.time())
        for chart in range(1, CHARTS + 1):
            asked = time.monotonic()
            s.telegram.message(OWNER, OWNER, "/chart 90d")
            sent = await s.telegram.wait_for_call(
                "sendPhoto", lambda call, at=asked: call.at >= at, timeout=120
            )
            name = {1: "first chart", 2: "next chart", CHARTS: f"chart {CHARTS}"}.get(chart)
            if name:
                figures[f"{name} s"] = sent.at - asked
                figures[f"RSS after {name} MB"] = s.process.rss_mb()
        figures["peak RSS MB"] = s.process.peak_rss_mb()
    return figures


async def series_on(path: Path, runs: int) -> None:
    """storage.daily over a database seeded by bench.stats (1M joins, 5 channels)."""
    from bench.stats import CHANNELS, chat_id
    from storage.daily import daily, utc_day
    from storage.db import open_database

    with sqlite3.connect(path) as conn:
        today = utc_day(conn.execute("SELECT max(joined_at) FROM joins").fetchone()[0])
    db = await open_database(path)
    try:
        for scope, chats in (("largest", [chat_id(0)]), ("all", [chat_id(i) for i in range(5)])):
            for days in (30, 90):
                timings = []
                for _ in range(runs):
                    started = time.perf_counter()
                    await daily(db, chats, today - days + 1, today)
                    timings.append((time.perf_counter() - started) * 1000)
                median, low, high = summary(timings)
                name = f"daily {days}d, {scope} ({len(chats)}/{CHANNELS}) ms"
                print(f"{name:<28} {median:>9.1f} {low:>9.1f} {high:>9.1f}")
    finally:
        await db.close()


def render_alone(runs: int) -> list[float]:
    from bot.admin.chart import render
    from storage.daily import Day

    rng = random.Random(18)
    days = [
        Day(20_000 + i, *(rng.randint(0, n) for n in (800, 100, 50, 150, 90))) for i in range(90)
    ]
    render(days, "last 90 days")  # the import and font cache, once
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        render(days, "last 90 days")
        timings.append(time.perf_counter() - started)
    return timings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--joins", type=int, default=100_000)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to run the bot from")
    parser.add_argument("--db", type=Path, help="only time the daily series on this bench.stats db")
    args = parser.parse_args()
    if args.db:
        await series_on(args.db, args.runs)
        return
    tree = args.tree.resolve()
    with_chart = (tree / "bot" / "chart.py").exists()
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name, value in (await one_run(tree, args.joins, with_chart)).items():
            results.setdefault(name, []).append(value)
    print(f"tree {tree}; {args.runs} runs" + (f", {args.joins:,} joins" if with_chart else ""))
    print(f"{'figure':<28} {'median':>9} {'min':>9} {'max':>9}")
    for name, values in results.items():
        median, low, high = summary(values)
        print(f"{name:<28} {median:>9.2f} {low:>9.2f} {high:>9.2f}")
    if with_chart and tree == ROOT:
        median, low, high = summary(render_alone(args.runs))
        print(f"{'render alone, 90 days s':<28} {median:>9.3f} {low:>9.3f} {high:>9.3f}")


if __name__ == "__main__":
    asyncio.run(main())
