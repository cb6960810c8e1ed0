"""The least a durable commit costs a lone join, idle CPU and all.

At 50 joins/s the bridge sits idle ~20 ms between joins, and every join's
conversion row is committed before its POST (bench/RESULTS.md has the
timelines). This prints what the bridge's write path (`Database.transaction`, as the
poller uses it) costs after such an idle spell, against the same calls back to
back: an empty transaction, and one holding a single conversion row and
nothing else.

    python -m bench.commit_floor [--rounds 400] [--idle-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from storage import outbox
from storage.db import Database, Transaction, open_database


def _row(i: int) -> outbox.NewRow:
    # The size of an attributed conversion's body (fbc, fbp, IP, User-Agent, URL).
    return outbox.NewRow(
        kind="conversion",
        path="/events/conversion",
        body={
            "telegramUserId": 10_000_000 + i,
            "channelId": "-1001234567890",
            "eventType": "Lead",
            "eventTime": 1_764_000_000_000 + i,
            "fbc": f"fb.1.1764000000000.IwAR{i:020d}",
            "fbp": f"fb.1.1764000000000.{i:010d}",
            "clientIp": "203.0.113.7",
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36"
            " (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
            "eventSourceUrl": f"https://landing.example/?utm_source=meta&fbclid=IwAR{i}",
        },
        idempotency_key=f"bench-floor-{i}",
        telegram_user_id=10_000_000 + i,
        chat_id=-1001234567890,
        event_type="Lead",
        event_time_ms=1_764_000_000_000 + i,
    )


Work = Callable[[Transaction], Awaitable[None]]


async def _nothing(tx: Transaction) -> None:
    return None


async def _timed(db: Database, work: Work) -> float:
    started = time.perf_counter()
    async with db.transaction() as tx:
        await work(tx)
    return (time.perf_counter() - started) * 1e6


async def measure(rounds: int, idle: float) -> dict[str, list[float]]:
    """µs per write, each kind alternated round by round so drift hits all alike."""
    found: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(Path(tmp) / "floor.db")
        try:
            counter = itertools.count()
            kinds: dict[str, Work] = {
                "empty transaction": _nothing,
                "one conversion row": lambda tx: outbox.enqueue_many(tx, [_row(next(counter))]),
            }
            for _ in range(rounds):
                for name, work in kinds.items():
                    await asyncio.sleep(idle)
                    found.setdefault(f"{name}, after {idle * 1000:.0f} ms idle", []).append(
                        await _timed(db, work)
                    )
                    found.setdefault(f"{name}, back to back", []).append(await _timed(db, work))
        finally:
            await db.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--idle-ms", type=float, default=20.0)
    args = parser.parse_args()
    found = asyncio.run(measure(args.rounds, args.idle_ms / 1000))
    print(f"{'write':<48} {'median':>8} {'p10':>8} {'p90':>8}  (µs, {args.rounds} rounds)")
    for name, values in found.items():
        values = sorted(values[len(values) // 10 :])  # the first tenth warms up
        deciles = statistics.quantiles(values, n=10)
        print(f"{name:<48} {statistics.median(values):8.0f} {deciles[0]:8.0f} {deciles[-1]:8.0f}")


if __name__ == "__main__":
    main()
