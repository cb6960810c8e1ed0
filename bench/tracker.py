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
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from bench.common import harness_gc_paused, percentile, summary
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID


def visitor_ip(i: int) -> str:
    """A distinct visitor per request: the bench's process is the landing page's
    server, naming each visitor it forwards (the tracker limits per visitor)."""
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


async def open_loop(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, object]], rate: float
) -> list[float]:
    latencies: list[float] = []
    failures = 0

    async def one(i: int, body: dict[str, object]) -> None:
        nonlocal failures
        started = time.perf_counter()
        headers = {"X-Adtarget-Client-IP": visitor_ip(i)}
        async with session.post(url, json=body, headers=headers) as response:
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
        tasks.append(asyncio.create_task(one(i, body)))
    await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{failures} requests failed")
    return latencies


# Closed-loop clients for the throughput figure: enough that the tracker, not the
# clients' round trips, sets the pace on two cores.
THROUGHPUT_CLIENTS = 64


async def closed_loop_rate(
    session: aiohttp.ClientSession, url: str, seconds: float, clients: int = THROUGHPUT_CLIENTS
) -> float:
    """Visits answered per second with `clients` sending back to back for `seconds`:
    the highest rate the tracker sustains (each a distinct visitor, as in open_loop)."""
    numbers = itertools.count(5_000_000)
    answered = failures = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal answered, failures
        while time.perf_counter() < stop_at:
            i = next(numbers)
            body = {"tempId": f"20000000-0000-4000-8000-{i:012d}", "href": "https://l.example/"}
            headers = {"X-Adtarget-Client-IP": visitor_ip(i)}
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    answered += 1
                else:
                    failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    if failures:
        raise RuntimeError(f"{failures} visits failed at full speed")
    return answered / (time.perf_counter() - started)


class Staged(Protocol):
    telegram: FakeTelegram
    tracker: str


# Given the pool size, the bridge(s) to measure: bench/flows.py's one process on
# SQLite by default, bench/pg.py's PostgreSQL clusters.
Staging = Callable[[int], contextlib.AbstractAsyncContextManager[Staged]]


async def one_run(
    seconds: float, staging: Staging | None = None, *, throughput: bool = False
) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of visits at 500/s and invites at 200/s; with `throughput`,
    also "visits/s" (the closed-loop rate, twice, as a pair)."""
    from bench.flows import stage  # flows builds on this module's open loop

    invites = int(200 * seconds)
    staged = staging(invites + 50) if staging else stage("bot", pool=invites + 50)
    async with staged as s:
        joins = asyncio.create_task(_joins_meanwhile(s.telegram))
        connector = aiohttp.TCPConnector(limit=200)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                with harness_gc_paused():
                    # Visits first: the invite phase empties the pool, and its refill
                    # (thousands of createChatInviteLink calls) would overlap them.
                    visit_ms = await open_loop(
                        session,
                        f"{s.tracker}/api/v1/events/visit",
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
                        f"{s.tracker}/api/v1/events/invite",
                        [
                            {
                                "tempId": f"00000000-0000-4000-8000-{i:012d}",
                                "channelId": str(CHANNEL_ID),
                            }
                            for i in range(invites)
                        ],
                        200,
                    )
                    rate = (
                        await closed_loop_rate(session, f"{s.tracker}/api/v1/events/visit", seconds)
                        if throughput
                        else 0.0
                    )
        finally:
            joins.cancel()
    found = {
        "invite": (statistics.median(invite_ms), percentile(invite_ms, 0.99)),
        "visit": (statistics.median(visit_ms), percentile(visit_ms, 0.99)),
    }
    if throughput:
        found["visits/s"] = (rate, rate)
    return found


async def _joins_meanwhile(telegram: FakeTelegram) -> None:
    user = 20_000_000
    while True:
        telegram.join(CHANNEL_ID, user)
        user += 1
        await asyncio.sleep(1.0)


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
