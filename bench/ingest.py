"""Ingest: joins per second from getUpdates to a committed outbox row (courier off).

Runs the real bridge (poller, dispatcher, SQLite) against the loopback fake
Telegram: N joins through minted links are queued at once, and the clock runs
from the first getUpdates that can return them until the N-th outbox row is
committed. Prints the median of the runs with min and max.

    python -m bench.ingest [--joins 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from bench.common import count_rows, summary, wait_for
from bot.settings import Settings
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, RunningBridge, bridge_settings


async def mint_many(running: RunningBridge, count: int) -> list[str]:
    urls: list[str] = []
    for start in range(0, count, 50):
        chunk = range(start, min(start + 50, count))
        urls += await asyncio.gather(
            *(running.mint(f"00000000-0000-4000-8000-{i:012d}", fbc=f"fb.1.1.{i}") for i in chunk)
        )
    return urls


@contextlib.contextmanager
def outbox_rows(settings: Settings) -> Iterator[Callable[[], int]]:
    """Counts the outbox through a connection of its own, as count_rows does."""
    if settings.database_url is None:
        yield lambda: count_rows(settings.database_path, "SELECT count(*) FROM outbox")
        return
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:

        def count() -> int:
            row = conn.execute("SELECT count(*) FROM outbox").fetchone()
            return 0 if row is None else int(row[0])

        yield count


async def one_run(joins: int, profile: bool = False, database_url: str | None = None) -> float:
    """On SQLite, or on PostgreSQL at `database_url` (an empty database)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        telegram, adtarget = FakeTelegram(), FakeAdTarget()
        await telegram.start()
        await adtarget.start()
        telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
        settings = bridge_settings(
            Path(tmp),
            telegram,
            adtarget,
            courier_enabled=False,
            log_level="WARNING",
            **({} if database_url is None else {"database_url": database_url}),
        )
        running = RunningBridge(settings)
        await running.start()
        try:
            await running.track_channel(telegram)
            urls = await mint_many(running, joins)
            outbox = stack.enter_context(outbox_rows(settings))
            profiler = cProfile.Profile() if profile else None
            started = time.monotonic()
            if profiler:
                profiler.enable()
            for i, url in enumerate(urls):
                telegram.join(CHANNEL_ID, 10_000_000 + i, url, date=1_764_100_000 + i)
            finished = await wait_for(lambda: outbox() >= joins, timeout=300)
            if profiler:
                profiler.disable()
                pstats.Stats(profiler).sort_stats(
                    os.environ.get("BENCH_SORT", "tottime")
                ).print_stats(os.environ.get("BENCH_FILTER", ""), 30)
            return joins / (finished - started)
        finally:
            await running.stop()
            await telegram.stop()
            await adtarget.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the measured window")
    args = parser.parse_args()
    rates = [await one_run(args.joins, args.profile) for _ in range(args.runs)]
    median, low, high = summary(rates)
    print(f"ingest: {median:,.0f} joins/s median (min {low:,.0f}, max {high:,.0f}),")
    print(f"        {args.joins} joins x {args.runs} runs; target >= 3,000 joins/s")


if __name__ == "__main__":
    asyncio.run(main())
