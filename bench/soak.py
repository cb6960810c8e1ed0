"""Soak: mixed traffic for a long while, with faults, one SIGKILL and a restart.

Visits, invites and joins through the tracker and the fake Telegram, leaves and
organic joins; an AdTarget fault injected every few minutes (503s, hangs,
dropped connections, answers lost after processing, 429s); the bridge killed
with SIGKILL halfway and started again. At the end: every attributed join was
delivered exactly once, memory has no growth trend after warm-up, and the
database passes PRAGMA integrity_check.

    python -m bench.soak [--minutes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.flows import stage
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, BridgeProcess, eventually

CONVERSION = "/api/v1/events/conversion"
WARM_UP = 300.0


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql).fetchall()


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return 0.0
    xs, ys = [t for t, _ in samples], [m for _, m in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600


async def traffic(
    base: str, telegram: FakeTelegram, stop: asyncio.Event, counts: Counter[str]
) -> None:
    rng = random.Random(7)
    user = 30_000_000
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while not stop.is_set():
            for _ in range(4):
                user += 1
                temp_id = f"{user:08d}-0000-4000-8000-000000000000"
                try:
                    await http.post(
                        "/api/v1/events/visit",
                        json={
                            "tempId": temp_id,
                            "href": f"https://l.example/?fbclid=F{user}&utm_source=s{user % 3}",
                        },
                    )
                    invite = await http.post(
                        "/api/v1/events/invite",
                        json={"tempId": temp_id, "channelId": str(CHANNEL_ID)},
                    )
                except httpx.HTTPError:
                    counts["tracker errors"] += 1
                    continue
                if invite.status_code == 200 and rng.random() < 0.8:
                    telegram.join(CHANNEL_ID, user, invite.json()["inviteLink"])
                    counts["attributed joins sent"] += 1
                    if rng.random() < 0.1:
                        telegram.leave(CHANNEL_ID, user)
            user += 1
            telegram.join(CHANNEL_ID, user)  # organic
            counts["organic joins sent"] += 1
            await asyncio.sleep(1.0)


async def faults(adtarget: FakeAdTarget, stop: asyncio.Event, every: float) -> None:
    kinds = ["503", "hang", "drop", "late", "429"]
    i = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        kind = kinds[i % len(kinds)]
        i += 1
        print(f"  [{time.strftime('%H:%M:%S')}] fault: {kind}", flush=True)
        if kind == "503":
            adtarget.fail(503, "API_DISABLED", seconds=20, paths=(CONVERSION,))
        elif kind == "hang":
            adtarget.hang(15, count=3, paths=(CONVERSION,))
        elif kind == "drop":
            adtarget.drop_connections(count=5, paths=(CONVERSION,))
        elif kind == "late":
            adtarget.process_then_delay(15, count=3, paths=(CONVERSION,))
        else:
            adtarget.fail(429, "RATE_LIMITED", count=3, paths=(CONVERSION,))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    args = parser.parse_args()
    total = args.minutes * 60
    counts: Counter[str] = Counter()
    stop = asyncio.Event()
    memory: list[list[tuple[float, float]]] = [[], []]
    async with stage("bot", pool=50, adtarget_timeout=5, backoff_cap=10) as s:
        started = time.monotonic()
        await asyncio.sleep(2)
        load = asyncio.create_task(traffic(s.tracker, s.telegram, stop, counts))
        chaos = asyncio.create_task(faults(s.adtarget, stop, every=180))
        life, life_start, killed = 0, time.monotonic(), False
        while time.monotonic() - started < total:
            await asyncio.sleep(10)
            if time.monotonic() - life_start > WARM_UP:
                memory[life].append((time.monotonic(), s.process.rss_mb()))
            if not killed and time.monotonic() - started > total / 2:
                print(f"  [{time.strftime('%H:%M:%S')}] SIGKILL and restart", flush=True)
                s.process.kill()
                await s.process.wait(10)
                s.process = BridgeProcess(s.env, s.db.parent / "soak-2.log")
                await s.process.start()
                life, life_start, killed = 1, time.monotonic(), True
        stop.set()
        await asyncio.gather(load, chaos, return_exceptions=True)
        s.adtarget.clear_faults()
        drain_sql = "SELECT count(*) FROM outbox WHERE kind = 'conversion' AND state != 'delivered'"
        await eventually(lambda: query(s.db, drain_sql)[0][0] == 0, timeout=600, interval=1)
        s.process.terminate()
        exit_status = await s.process.wait(20)
        attributed = {
            int(r[0]) for r in query(s.db, "SELECT user_id FROM joins WHERE kind = 'attributed'")
        }
        sent = Counter(int(c["telegramUserId"]) for c in s.adtarget.conversions)
        duplicates = [u for u, n in sent.items() if n > 1]
        missing = attributed - set(sent)
        parked = query(s.db, "SELECT count(*) FROM outbox WHERE state = 'parked'")[0][0]
        integrity = query(s.db, "PRAGMA integrity_check")[0][0]
    print(f"soak: {args.minutes:.0f} min, {dict(counts)}")
    print(
        f"  attributed joins recorded {len(attributed)},"
        f" conversions at AdTarget {sum(sent.values())}"
    )
    print(f"  missing {len(missing)}, duplicated {len(duplicates)}, parked {parked}")
    for i, samples in enumerate(memory, 1):
        if samples:
            print(
                f"  process {i}: RSS {samples[0][1]:.0f} -> {samples[-1][1]:.0f} MB after warm-up,"
                f" trend {slope_mb_per_hour(samples):+.1f} MB/h over {len(samples)} samples"
            )
    print(f"  integrity_check: {integrity}; exit status {exit_status}")
    ok = not missing and not duplicates and integrity == "ok" and exit_status == 0
    print("  RESULT:", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    asyncio.run(main())
