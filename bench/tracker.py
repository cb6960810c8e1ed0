"""Tracker latency: invite from the pool at 200 requests/s, visit at 500 requests/s.

The bridge runs as its own process (`python -m bot`) against the loopback fakes,
polling Telegram the whole time (a join a second keeps the poller busy); this
process sends requests at a fixed rate (open loop: a slow answer does not slow
the sender) and records each request's latency. Prints p50 / p99 per run and
the median over runs.

    python -m bench.tracker [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import summary
from tests.fakes.adtarget import FakeAdTarget
from tests.fakes.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, BridgeProcess, bridge_env, eventually


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def open_loop(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, object]], rate: float
) -> list[float]:
    latencies: list[float] = []
    failures = 0

    async def one(body: dict[str, object]) -> None:
        nonlocal failures
        started = time.perf_counter()
        async with session.post(url, json=body) as response:
            await response.read()
            if response.status != 200:
                failures += 1
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{failures} requests failed")
    return latencies


def pool_size(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM invite_links WHERE visit_id IS NULL AND discarded_at IS NULL"
            ).fetchone()
    except sqlite3.OperationalError:
        return 0  # not migrated yet
    return int(row[0])


async def one_run(seconds: float) -> dict[str, tuple[float, float]]:
    invites = int(200 * seconds)
    with tempfile.TemporaryDirectory() as tmp:
        telegram, adtarget = FakeTelegram(), FakeAdTarget()
        await telegram.start()
        await adtarget.start()
        telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
        env = bridge_env(
            Path(tmp),
            telegram,
            adtarget,
            log_level="WARNING",
            tracker_port=0,
            invite_pool_size=invites + 50,
            invite_mint_interval=0,
            tracker_rate_per_minute=10_000_000,
            tracker_burst=100_000,
        )
        env["TRACKER_PORT"] = str(_free_port())
        process = BridgeProcess(env, Path(tmp) / "bridge.log")
        await process.start()
        try:
            telegram.bot_status_change(CHANNEL_ID, "administrator")
            db_path = Path(env["DATABASE_PATH"])
            await eventually(lambda: pool_size(db_path) >= invites + 50, timeout=600)
            base = f"http://127.0.0.1:{env['TRACKER_PORT']}"
            joins = asyncio.create_task(_joins_meanwhile(telegram))
            connector = aiohttp.TCPConnector(limit=200)
            async with aiohttp.ClientSession(connector=connector) as session:
                # Visits first: the invite phase empties the pool, and its refill
                # (2,000 createChatInviteLink calls) would otherwise overlap them.
                visit_ms = await open_loop(
                    session,
                    f"{base}/api/v1/events/visit",
                    [
                        {
                            "tempId": f"10000000-0000-4000-8000-{i:012d}",
                            "href": f"https://landing.example/?fbclid=Iw{i}&utm_source=meta",
                            "fbp": f"fb.1.1764100000000.{i}",
                        }
                        for i in range(int(500 * seconds))
                    ],
                    500,
                )
                invite_ms = await open_loop(
                    session,
                    f"{base}/api/v1/events/invite",
                    [
                        {
                            "tempId": f"00000000-0000-4000-8000-{i:012d}",
                            "channelId": str(CHANNEL_ID),
                        }
                        for i in range(invites)
                    ],
                    200,
                )
            joins.cancel()
            process.terminate()
            await process.wait(20)
        finally:
            await process.ensure_dead()
            await telegram.stop()
            await adtarget.stop()
    return {
        "invite": (statistics.median(invite_ms), percentile(invite_ms, 0.99)),
        "visit": (statistics.median(visit_ms), percentile(visit_ms, 0.99)),
    }


async def _joins_meanwhile(telegram: FakeTelegram) -> None:
    user = 20_000_000
    while True:
        telegram.join(CHANNEL_ID, user)
        user += 1
        await asyncio.sleep(1.0)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [await one_run(args.seconds) for _ in range(args.runs)]
    for name, rate in (("invite", 200), ("visit", 500)):
        p50 = summary([r[name][0] for r in runs])
        p99 = summary([r[name][1] for r in runs])
        print(
            f"tracker {name} at {rate}/s: p50 {p50[0]:.1f} ms, p99 {p99[0]:.1f} ms median"
            f" (p99 min {p99[1]:.1f}, max {p99[2]:.1f}) over {args.runs} runs; target p99 <= 20 ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
