"""The measured flows: the bridge (`python -m bot`) or the naive baseline
(`python -m bench.naive_bot`) as a process of its own, the loopback fakes of
Telegram and AdTarget in this one (as a remote Telegram would be, they do not
share the measured process's core)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import count_rows, free_port, harness_gc_paused, percentile, pool_size
from bot.settings import Settings
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, ROOT, BridgeProcess, bridge_env, eventually

CONVERSION = "/api/v1/events/conversion"
DEFAULT_MINT_INTERVAL = Settings.model_fields["invite_mint_interval"].default
UNLIMITED = {"adtarget_rate_per_minute": 6_000_000, "adtarget_burst": 100_000}


@dataclass
class Stage:
    telegram: FakeTelegram
    adtarget: FakeAdTarget
    process: BridgeProcess
    env: dict[str, str]
    db: Path
    tracker: str
    started_at: float  # monotonic, when the process was spawned

    async def restart(self, **settings: Any) -> None:
        """Stop the bot gracefully and start it again with some settings changed."""
        self.process.terminate()
        await self.process.wait(30)
        self.env.update({name.upper(): str(value) for name, value in settings.items()})
        log = self.db.parent / "process-2.log"
        self.process = BridgeProcess(self.env, log, self.process.module)
        polls = len(self.telegram.calls_to("getUpdates"))
        await self.process.start()
        await eventually(lambda: len(self.telegram.calls_to("getUpdates")) > polls, timeout=60)


@contextlib.asynccontextmanager
async def stage(
    module: str,
    *,
    at_rate: float = 6_000_000,
    at_burst: int = 100_000,
    pool: int = 0,
    **settings: Any,
) -> AsyncIterator[Stage]:
    """Fakes here, the bot there; for the bridge, the channel tracked and its pool full."""
    with tempfile.TemporaryDirectory() as tmp:
        telegram = FakeTelegram()
        adtarget = FakeAdTarget(rate_per_minute=at_rate, burst=at_burst)
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
            invite_pool_size=pool,
            invite_mint_interval=0,
            tracker_rate_per_minute=10_000_000,
            tracker_burst=100_000,
            # One load generator stands for thousands of visitors.
            tracker_visits_per_hour=10_000_000,
            **settings,
        )
        env["TRACKER_PORT"] = str(port)
        process = BridgeProcess(env, Path(tmp) / "process.log", module=module)
        started = time.monotonic()
        await process.start()
        db = Path(env["DATABASE_PATH"])
        try:
            await telegram.wait_for_call("getUpdates", timeout=60)
            if module == "bot":
                telegram.bot_status_change(CHANNEL_ID, "administrator")
                await eventually(lambda: pool_size(db) >= pool, timeout=600, interval=0.05)
            current = Stage(
                telegram, adtarget, process, env, db, f"http://127.0.0.1:{port}", started
            )
            yield current
            # A caller may have replaced the process (the soak restarts it).
            process = current.process
        finally:
            if process.proc is not None and process.proc.returncode is None:
                process.terminate()
                with contextlib.suppress(TimeoutError):
                    await process.wait(20)
            await process.ensure_dead()
            await telegram.stop()
            await adtarget.stop()


async def invite_links(tracker: str, count: int) -> list[str]:
    """Personal links for `count` visitors, through the tracker as a landing page would."""
    async with httpx.AsyncClient(base_url=tracker, timeout=30) as http:

        async def one(i: int) -> str:
            temp_id = f"00000000-0000-4000-8000-{i:012d}"
            await http.post(
                "/api/v1/events/visit",
                json={"tempId": temp_id, "href": f"https://l.example/?fbclid=F{i}"},
            )
            answer = await http.post(
                "/api/v1/events/invite", json={"tempId": temp_id, "channelId": str(CHANNEL_ID)}
            )
            return str(answer.json()["inviteLink"])

        links: list[str] = []
        for start in range(0, count, 50):
            links += await asyncio.gather(*(one(i) for i in range(start, min(start + 50, count))))
        return links


async def ingest_bridge(joins: int, runs: int) -> tuple[list[float], float]:
    """(joins/s for each of `runs` bursts of `joins`, from their arrival at
    Telegram to their committed outbox rows; database bytes per 100,000
    attributed joins). One stage serves every burst: setting it up (a pool
    and a visit per join) takes far longer than a burst."""
    total = joins * runs
    async with stage("bot", pool=total, courier_enabled=False) as s:
        links = await invite_links(s.tracker, total)
        # The pool was filled flat out to set the stage; measure with the link
        # upkeep (refill, revoking used links) paced as it is in production.
        await s.restart(invite_mint_interval=DEFAULT_MINT_INTERVAL)
        query = "SELECT count(*) FROM outbox WHERE kind = 'conversion'"
        rates: list[float] = []
        for first in range(0, total, joins):
            with harness_gc_paused():
                started = time.monotonic()
                for i in range(first, first + joins):
                    s.telegram.join(CHANNEL_ID, 10_000_000 + i, links[i])
                await eventually(
                    lambda end=first + joins: count_rows(s.db, query) >= end,
                    timeout=600,
                    interval=0.005,
                )
                rates.append(joins / (time.monotonic() - started))
            await asyncio.sleep(1)
        await asyncio.sleep(2.5)  # a WAL checkpoint or two before weighing the file
        # Everything one attributed join leaves behind: visit, link, join, outbox
        # row and the stored update, over an empty migrated database.
        per_100k = (s.db.stat().st_size - await _empty_db_bytes()) / total * 100_000
    return rates, per_100k


async def ingest_naive(joins: int) -> float:
    """Joins/s from arrival at Telegram to the naive bot's POST reaching AdTarget."""
    async with stage("bench.naive_bot") as s:
        with harness_gc_paused():
            started = time.monotonic()
            for i in range(joins):
                s.telegram.join(CHANNEL_ID, 10_000_000 + i)
            await s.adtarget.wait_for_conversions(joins, timeout=600)
        last = max(r.at for r in s.adtarget.received_on(CONVERSION))
        return joins / (last - started)


async def latency(module: str, *, rate: float, seconds: float) -> tuple[float, float]:
    """(p50, p99) ms from a join's arrival at Telegram to its POST at AdTarget."""
    count = int(rate * seconds)
    bridge = module == "bot"
    async with stage(module, pool=count if bridge else 0, **UNLIMITED) as s:
        links: list[str | None] = [None] * count
        if bridge:
            links = list(await invite_links(s.tracker, count))
            # As for ingest: the link upkeep paced as in production while measured.
            await s.restart(invite_mint_interval=DEFAULT_MINT_INTERVAL)
        sent: dict[int, float] = {}
        with harness_gc_paused():
            start = time.monotonic()
            for i, url in enumerate(links):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[20_000_000 + i] = time.monotonic()
                s.telegram.join(CHANNEL_ID, 20_000_000 + i, url)
            await s.adtarget.wait_for_conversions(count, timeout=120)
        arrived = {
            int(r.body["telegramUserId"]): r.at
            for r in s.adtarget.received_on(CONVERSION)
            if isinstance(r.body, dict) and r.status == 200 and not r.replay
        }
        ms = [(arrived[u] - t) * 1000 for u, t in sent.items()]
    return statistics.median(ms), percentile(ms, 0.99)


async def drain(rows: int, per_minute: int, burst: int) -> tuple[float, int]:
    """Rows queued during an outage, then AdTarget back with `per_minute`/`burst`:
    (sustained rate as a share of the limit, 429s drawn)."""
    async with stage(
        "bot",
        at_rate=per_minute,
        at_burst=burst,
        send_organic=True,
        adtarget_rate_per_minute=per_minute,
        adtarget_burst=burst,
        backoff_base=0.5,
        backoff_cap=2,
    ) as s:
        await eventually(lambda: bool(s.adtarget.received_on("/api/v1/channels")), timeout=30)
        s.adtarget.fail(503, "API_DISABLED", paths=(CONVERSION,))
        for i in range(rows):
            s.telegram.join(CHANNEL_ID, 30_000_000 + i)
        await eventually(
            lambda: count_rows(s.db, "SELECT count(*) FROM outbox") >= rows, timeout=120
        )
        await asyncio.sleep(3)  # the refill during the outage: a full bucket at recovery
        s.adtarget.clear_faults()
        await s.adtarget.wait_for_conversions(rows, timeout=rows / per_minute * 60 * 3 + 60)
        ok = sorted(r.at for r in s.adtarget.received_on(CONVERSION) if r.status == 200)
        limited = s.adtarget.status_counts().get(429, 0)
    # The burst goes out at once; the sustained rate is what follows it.
    window = ok[burst:]
    sustained = (len(window) - 1) / (window[-1] - window[0]) * 60 if len(window) > 1 else 0.0
    return sustained / per_minute, limited


async def peak_rss(module: str, joins: int, chunk: int = 100) -> float:
    """Peak RSS (MB) of the process over a run of `joins` joins, each reported."""
    # The bridge's courier sends 4 at a time by default, plenty for AdTarget's
    # 300/min; here it must keep up with joins arriving as fast as they can.
    async with stage(module, send_organic=True, courier_concurrency=8, **UNLIMITED) as s:
        # Steady traffic in chunks, each reported before the next arrives: the
        # baseline would otherwise start every POST of the run at once.
        for start in range(0, joins, chunk):
            end = min(start + chunk, joins)
            for i in range(start, end):
                s.telegram.join(CHANNEL_ID, 40_000_000 + i)
            await s.adtarget.wait_for_conversions(end, timeout=300)
        return s.process.peak_rss_mb()


async def startup() -> float:
    """Seconds from spawning `python -m bot` (empty database) to its first getUpdates."""
    async with stage("bot") as s:
        first = s.telegram.calls_to("getUpdates")[0].at
        return first - s.started_at


async def aiogram_floor() -> tuple[float, float]:
    """(seconds, MB) for a bare `import aiogram` process, measured the same way.

    Its peak is VmHWM, as for the bots. Not `ru_maxrss`: Linux keeps that across
    exec, so it reported the forking harness's own size (~350 MB), not aiogram's."""
    code = (
        "import aiogram, aiogram.types, aiogram.methods;"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, _ = await proc.communicate()
    return time.monotonic() - started, int(out.strip()) / 1024


async def _empty_db_bytes() -> int:
    from storage.db import open_database

    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(Path(tmp) / "empty.db")
        await db.close()
        return (Path(tmp) / "empty.db").stat().st_size
