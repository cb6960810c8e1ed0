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
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import free_port
from tests.fakes.adtarget import FakeAdTarget
from tests.fakes.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, BridgeProcess, bridge_env, eventually

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
    with tempfile.TemporaryDirectory() as tmp:
        telegram, adtarget = FakeTelegram(), FakeAdTarget()
        await telegram.start()
        await adtarget.start()
        telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
        port = free_port()
        env = bridge_env(
            Path(tmp),
            telegram,
            adtarget,
            log_level="WARNING",
            tracker_port=port,
            adtarget_timeout=5,
            backoff_cap=10,
            tracker_rate_per_minute=100_000,
            tracker_burst=10_000,
            invite_pool_size=50,
        )
        env["TRACKER_PORT"] = str(port)
        db = Path(env["DATABASE_PATH"])
        base = f"http://127.0.0.1:{port}"
        counts: Counter[str] = Counter()
        stop = asyncio.Event()
        memory: list[list[tuple[float, float]]] = [[], []]
        started = time.monotonic()
        process = BridgeProcess(env, Path(tmp) / "soak-1.log")
        await process.start()
        telegram.bot_status_change(CHANNEL_ID, "administrator")
        await eventually(lambda: bool(telegram.calls_to("getUpdates")), timeout=60)
        await asyncio.sleep(2)
        load = asyncio.create_task(traffic(base, telegram, stop, counts))
        chaos = asyncio.create_task(faults(adtarget, stop, every=180))
        life, life_start, killed = 0, time.monotonic(), False
        while time.monotonic() - started < total:
            await asyncio.sleep(10)
            if time.monotonic() - life_start > WARM_UP:
                memory[life].append((time.monotonic(), process.rss_mb()))
            if not killed and time.monotonic() - started > total / 2:
                print(f"  [{time.strftime('%H:%M:%S')}] SIGKILL and restart", flush=True)
                process.kill()
                await process.wait(10)
                process = BridgeProcess(env, Path(tmp) / "soak-2.log")
                await process.start()
                life, life_start, killed = 1, time.monotonic(), True
        stop.set()
        await asyncio.gather(load, chaos, return_exceptions=True)
        adtarget.clear_faults()
        drain_sql = "SELECT count(*) FROM outbox WHERE kind = 'conversion' AND state != 'delivered'"
        await eventually(lambda: query(db, drain_sql)[0][0] == 0, timeout=600, interval=1)
        process.terminate()
        exit_status = await process.wait(20)
        attributed = {
            int(r[0]) for r in query(db, "SELECT user_id FROM joins WHERE kind = 'attributed'")
        }
        sent = Counter(int(c["telegramUserId"]) for c in adtarget.conversions)
        duplicates = [u for u, n in sent.items() if n > 1]
        missing = attributed - set(sent)
        parked = query(db, "SELECT count(*) FROM outbox WHERE state = 'parked'")[0][0]
        integrity = query(db, "PRAGMA integrity_check")[0][0]
        await telegram.stop()
        await adtarget.stop()
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
