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
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

from bench.common import count_rows, summary, wait_for
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


async def one_run(joins: int, profile: bool = False) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        telegram, adtarget = FakeTelegram(), FakeAdTarget()
        await telegram.start()
        await adtarget.start()
        telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
        settings = bridge_settings(
            Path(tmp), telegram, adtarget, courier_enabled=False, log_level="WARNING"
        )
        running = RunningBridge(settings)
        await running.start()
        try:
            await running.track_channel(telegram)
            urls = await mint_many(running, joins)
            db_path = settings.database_path
            profiler = cProfile.Profile() if profile else None
            started = time.monotonic()
            if profiler:
                profiler.enable()
            for i, url in enumerate(urls):
                telegram.join(CHANNEL_ID, 10_000_000 + i, url, date=1_764_100_000 + i)
            finished = await wait_for(
                lambda: count_rows(db_path, "SELECT count(*) FROM outbox") >= joins, timeout=300
            )
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
