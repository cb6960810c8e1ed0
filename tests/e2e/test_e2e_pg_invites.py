"""Two bridge processes on one PostgreSQL hand out invite links to a crowd at once
(issue 20): no personal link ever reaches two visitors, whichever process served
them, and every request gets a link or a documented refusal."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.e2e.test_e2e_process import free_port
from tests.harness import (
    CHANNEL_ID,
    BridgeProcess,
    RunningBridge,
    bridge_env,
    bridge_settings,
    eventually,
)

# PostgreSQL by itself.
pytestmark = pytest.mark.one_engine


INVITE = "/api/v1/events/invite"
PER_PROCESS = 200
# Fewer pool links than requests: the crowd empties the pool, so the processes
# race both for pool rows and for links minted on demand, while the leader refills.
POOL = 150
# One test client stands for 400 visitors: the per-client limits stay per visitor
# (each has its own X-Forwarded-For), and nothing else limits the crowd.
UNLIMITED: dict[str, Any] = {
    "tracker_rate_per_minute": 10_000_000,
    "tracker_burst": 100_000,
    "tracker_visits_per_hour": 10_000_000,
}


def visitor(process: int, i: int) -> tuple[str, str]:
    """(tempId, address) of the i-th visitor sent to `process`."""
    n = process * PER_PROCESS + i
    return f"20202020-0000-4000-8000-{n:012d}", f"198.51.{100 + process}.{i % 250 + 1}"


async def track_channel(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, url: str
) -> None:
    """The channel tracked and its pool filled by an in-process bridge on the same
    database, stopped before the two processes start."""
    running = RunningBridge(
        bridge_settings(
            tmp_path,
            telegram,
            adtarget,
            database_url=url,
            invite_pool_size=POOL,
            invite_mint_interval=0,
        )
    )
    await running.start()
    try:
        await running.track_channel(telegram)
        await running.wait_scalar(
            "SELECT count(*) FROM invite_links WHERE kind = 'visitor' AND visit_id IS NULL",
            POOL,
            timeout=30,
        )
    finally:
        assert await running.stop() == 0


async def healthy(base: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:
            return (await http.get("/healthz")).status_code == 200
    return False


async def crowd(base: str, process: int) -> list[tuple[str, httpx.Response]]:
    """PER_PROCESS invite requests at once, each from a visitor of its own."""
    limits = httpx.Limits(max_connections=PER_PROCESS, max_keepalive_connections=PER_PROCESS)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:

        async def one(i: int) -> tuple[str, httpx.Response]:
            temp_id, address = visitor(process, i)
            response = await http.post(
                INVITE,
                json={"tempId": temp_id, "channelId": str(CHANNEL_ID)},
                headers={"X-Forwarded-For": address},
            )
            return temp_id, response

        return await asyncio.gather(*(one(i) for i in range(PER_PROCESS)))


def personal_links(url: str) -> dict[str, list[str]]:
    """Each personal link in the database with the tempIds of the visits it names."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT l.url, v.temp_id FROM invite_links l JOIN visits v ON v.id = l.visit_id"
            " WHERE l.kind = 'visitor'"
        ).fetchall()
    links: dict[str, list[str]] = {}
    for link, temp_id in rows:
        links.setdefault(link, []).append(temp_id)
    return links


async def test_two_processes_never_hand_one_link_to_two_visitors(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, postgres_url: str
) -> None:
    await track_channel(tmp_path, telegram, adtarget, postgres_url)
    ports = [free_port(), free_port()]
    processes = [
        BridgeProcess(
            bridge_env(
                tmp_path,
                telegram,
                adtarget,
                database_url=postgres_url,
                tracker_port=port,
                trusted_proxies="127.0.0.1",
                invite_pool_size=POOL,
                invite_mint_interval=0,
                **UNLIMITED,
            ),
            tmp_path / f"process-{n}.log",
        )
        for n, port in enumerate(ports)
    ]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for process in processes:
            await process.start()
        for base in bases:
            await eventually(lambda base=base: healthy(base), timeout=60, what=f"{base} healthy")

        answers = [
            a
            for batch in await asyncio.gather(crowd(bases[0], 0), crowd(bases[1], 1))
            for a in batch
        ]

        for process in processes:
            process.terminate()
        assert [await p.wait(30) for p in processes] == [0, 0]
    finally:
        for process in processes:
            await process.ensure_dead()

    assert len(answers) == 2 * PER_PROCESS
    given: dict[str, str] = {}  # tempId -> its personal link
    fallback: set[str] = set()
    for temp_id, response in answers:
        body = response.json()
        if response.status_code == 503:
            # The documented refusal (docs/tracker.md): no personal and no fallback link.
            assert body["error"]["code"] == "INVITE_POOL_EMPTY", body
            continue
        assert response.status_code == 200, body
        if body["fallback"]:
            fallback.add(body["inviteLink"])  # the channel's shared link, by design
        else:
            given[temp_id] = body["inviteLink"]
    # Fallback links are shared by every visitor who gets one: left out of the
    # uniqueness check. Here every visitor is within the quota and Telegram never
    # refuses a mint, so all of them should get a personal link.
    assert not fallback, f"{len(fallback)} fallback answers"
    assert len(given) == 2 * PER_PROCESS
    shared = [url for url, n in Counter(given.values()).items() if n > 1]
    assert not shared, f"links answered to two visitors: {shared[:3]}"

    stored = personal_links(postgres_url)
    for temp_id, url in given.items():
        assert stored[url] == [temp_id], f"{url}: visits {stored[url]}, answered to {temp_id}"
    for n, process in enumerate(processes):
        assert "Traceback" not in process.log(), f"process {n}:\n{process.log()[-3000:]}"
