"""The bridge on PostgreSQL: one process end to end, and two processes sharing the
store, with the leader killed (SIGKILL) or frozen (SIGSTOP) mid-delivery."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from bot.cluster.leadership import find_leader
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import (
    CHANNEL_ID,
    BridgeProcess,
    RunningBridge,
    bridge_env,
    bridge_settings,
    eventually,
    mint_links,
)

# PostgreSQL by itself.
pytestmark = pytest.mark.one_engine

CONVERSION = "/api/v1/events/conversion"
POLL_CONFLICT = "terminated by other getUpdates request"


async def test_a_bridge_on_postgresql_reports_each_join_once(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, postgres_url: str
) -> None:

    running = RunningBridge(
        bridge_settings(tmp_path, telegram, adtarget, database_url=postgres_url)
    )
    await running.start()
    try:
        await running.track_channel(telegram)
        url = await running.mint("00000000-0000-4000-8000-000000000001", fbc="fb.1.1.pg")
        update_id = telegram.join(CHANNEL_ID, 7000001, url)
        assert update_id is not None
        (conversion,) = await adtarget.wait_for_conversions(1)
        assert conversion["telegramUserId"] == 7000001
        assert conversion["fbc"] == "fb.1.1.pg"
        await running.wait_scalar("SELECT state FROM outbox", "delivered")
        await telegram.wait_confirmed(update_id)
        assert await running.scalar("SELECT count(*) FROM joins") == 1
        report = await running.bridge.health.report()
        assert report["cluster"]["role"] == "leader"
        assert report["database"]["ok"] is True
    finally:
        assert await running.stop() == 0
    assert len(adtarget.conversions) == 1
    # The file the SQLite default would use was never made.
    assert not (tmp_path / "bridge.db").exists()


def _tracker_url(process: BridgeProcess) -> str | None:
    found = re.search(r"tracker listening on (http://\S+)", process.log())
    return found.group(1) if found else None


async def _leader_pid(url: str) -> int | None:
    leader = await find_leader(url)
    found = re.search(r"pid (\d+)$", leader.identity) if leader else None
    return int(found.group(1)) if found else None


async def _delivered(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM outbox WHERE state = 'delivered'")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _start_pair(
    tmp_path: Path, env: dict[str, str], url: str
) -> tuple[BridgeProcess, BridgeProcess]:
    """Two bridges on one store: the first elected leader, the second standing by."""
    first = BridgeProcess(env, tmp_path / "first.log")
    await first.start()
    assert first.proc is not None
    await eventually(lambda: _is_leader(url, first), timeout=20, what="the first process leads")
    second = BridgeProcess(env, tmp_path / "second.log")
    await second.start()
    await eventually(lambda: _tracker_url(second) is not None, timeout=20, what="second tracker")
    return first, second


async def _is_leader(url: str, process: BridgeProcess) -> bool:
    assert process.proc is not None
    return await _leader_pid(url) == process.proc.pid


async def _role(tracker: str) -> str | None:
    """The role a tracker's /healthz reports (the full report needs no token from
    loopback in these tests' settings), or None when it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            answer = await http.get(f"{tracker}/healthz")
    except httpx.HTTPError:
        return None
    cluster = answer.json().get("cluster") if answer.status_code in (200, 503) else None
    return str(cluster["role"]) if isinstance(cluster, dict) else "answered"


async def test_the_leader_killed_mid_delivery_loses_nothing_and_a_standby_takes_over(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, postgres_url: str
) -> None:
    links = await mint_links(tmp_path, telegram, adtarget, 12, database_url=postgres_url)
    # AdTarget processes every conversion but answers slowly: the kill lands with
    # sends in flight that AdTarget has already stored.
    adtarget.process_then_delay(2.0, count=1000, paths=(CONVERSION,))
    env = bridge_env(tmp_path, telegram, adtarget, database_url=postgres_url, adtarget_timeout=1)
    first, second = await _start_pair(tmp_path, env, postgres_url)
    tracker = _tracker_url(second)
    assert tracker is not None
    try:
        for i, link in enumerate(links):
            telegram.join(CHANNEL_ID, 8000000 + i, link)
        await eventually(lambda: len(adtarget.conversions) >= 3, what="sends in flight")
        first.kill()
        killed_at = time.monotonic()
        assert await first.wait(10) == -9
        # The survivor's tracker answers throughout, and it becomes leader within 10 s.
        roles: list[str | None] = []
        while not await _is_leader(postgres_url, second):
            roles.append(await _role(tracker))
            assert time.monotonic() - killed_at < 10, "no new leader within 10 s"
            await asyncio.sleep(0.1)
        assert None not in roles, "the standby's tracker stopped answering"
        await eventually(
            lambda: telegram.calls_to("getUpdates")[-1].at > killed_at,
            timeout=10,
            what="the new leader polls",
        )
        adtarget.clear_faults()
        # The rows the dead leader had claimed go out again once their lease runs out
        # (ADTARGET_TIMEOUT * 2 + 30 s), with the same Idempotency-Key.
        await eventually(
            lambda: _all_delivered(postgres_url, len(links)), timeout=60, what="every row delivered"
        )
        second.terminate()
        assert await second.wait(10) == 0
    finally:
        await first.ensure_dead()
        await second.ensure_dead()
    users = sorted(c["telegramUserId"] for c in adtarget.conversions)
    assert users == [8000000 + i for i in range(len(links))], "each join exactly once"
    assert "elected leader" in second.log()


async def _all_delivered(url: str, count: int) -> bool:
    return await _delivered(url) == count


async def test_a_frozen_leader_is_replaced_and_stands_by_when_it_wakes(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, postgres_url: str
) -> None:
    await mint_links(tmp_path, telegram, adtarget, 0, database_url=postgres_url)
    env = bridge_env(tmp_path, telegram, adtarget, database_url=postgres_url, leader_lease=3)
    first, second = await _start_pair(tmp_path, env, postgres_url)
    assert first.proc is not None
    try:
        first.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        await eventually(
            lambda: _is_leader(postgres_url, second), timeout=15, what="the standby leads"
        )
        took_over = time.monotonic() - stopped_at
        assert took_over < 15
        polled_from = time.monotonic()
        await eventually(
            lambda: telegram.calls_to("getUpdates")[-1].at > polled_from,
            timeout=10,
            what="the new leader polls",
        )
        first.proc.send_signal(signal.SIGCONT)
        # Awake, the old leader finds its lease gone before it polls again.
        await eventually(
            lambda: "no longer the leader" in first.log(), timeout=10, what="old leader steps down"
        )
        await asyncio.sleep(2.0)  # room for a second consumer to show, were there one
        assert await _is_leader(postgres_url, second)
        # Telegram ends a long poll when another consumer asks: the new leader's
        # polls were never cut short by the old one.
        assert POLL_CONFLICT not in second.log()
        # And the old leader, standing by, still serves its tracker.
        tracker = _tracker_url(first)
        assert tracker is not None
        assert await _role(tracker) == "standby"
        first.terminate()
        second.terminate()
        assert await first.wait(10) == 0
        assert await second.wait(10) == 0
    finally:
        if first.proc is not None and first.proc.returncode is None:
            first.proc.send_signal(signal.SIGCONT)
        await first.ensure_dead()
        await second.ensure_dead()
