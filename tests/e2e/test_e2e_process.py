"""`python -m bot` as a process: SIGKILL mid-delivery, SIGTERM, bad token, Telegram down."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import (
    CHANNEL_ID,
    BridgeProcess,
    bridge_env,
    eventually,
    mint_links,
)

# reads the SQLite file; the PostgreSQL processes: test_e2e_postgres.py.
pytestmark = pytest.mark.one_engine

CONVERSION = "/api/v1/events/conversion"


def db_scalar(path: Path, sql: str) -> object:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(sql).fetchone()[0]


async def test_sigkill_mid_delivery_then_restart_delivers_each_join_once(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    links = await mint_links(tmp_path, telegram, adtarget, 12)
    # Every conversion is processed by AdTarget, but its answer is slow: the kill
    # lands while sends are in flight and after AdTarget has stored them.
    adtarget.process_then_delay(2.0, count=1000, paths=(CONVERSION,))
    env = bridge_env(tmp_path, telegram, adtarget, adtarget_timeout=5)
    first = BridgeProcess(env, tmp_path / "first.log")
    await first.start()
    try:
        for i, url in enumerate(links):
            telegram.join(CHANNEL_ID, 8000000 + i, url)
        await eventually(lambda: len(adtarget.conversions) >= 3, what="sends in flight")
        first.kill()
        assert await first.wait(10) == -9
    finally:
        await first.ensure_dead()
    in_flight = db_scalar(
        tmp_path / "bridge.db", "SELECT count(*) FROM outbox WHERE state != 'delivered'"
    )
    assert isinstance(in_flight, int)
    assert in_flight > 0, "the kill should leave undelivered rows"

    adtarget.clear_faults()
    second = BridgeProcess(env, tmp_path / "second.log")
    await second.start()
    try:
        await eventually(
            lambda: (
                db_scalar(
                    tmp_path / "bridge.db", "SELECT count(*) FROM outbox WHERE state = 'delivered'"
                )
                == len(links)
            ),
            timeout=30,
            what="every row delivered",
        )
        second.terminate()
        assert await second.wait(10) == 0
    finally:
        await second.ensure_dead()
    users = sorted(c["telegramUserId"] for c in adtarget.conversions)
    assert users == [8000000 + i for i in range(len(links))], "each join exactly once"
    assert db_scalar(tmp_path / "bridge.db", "SELECT count(*) FROM joins") == len(links)


async def test_sigterm_exits_0_quickly_even_with_a_send_in_flight(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    (url,) = await mint_links(tmp_path, telegram, adtarget, 1)
    adtarget.hang(30, paths=(CONVERSION,))
    process = BridgeProcess(
        bridge_env(tmp_path, telegram, adtarget, adtarget_timeout=20, poll_timeout=30),
        tmp_path / "bridge.log",
    )
    await process.start()
    try:
        telegram.join(CHANNEL_ID, 8100001, url)
        await eventually(lambda: bool(adtarget.received_on(CONVERSION)), what="send in flight")
        loop = asyncio.get_running_loop()
        started = loop.time()
        process.terminate()
        assert await process.wait(10) == 0
        assert loop.time() - started < 10
    finally:
        await process.ensure_dead()
    log = process.log()
    assert "handed back" in log
    assert "Joinbridge stopped" in log
    # The interrupted send is pending again, to be sent with the same key next time.
    assert db_scalar(tmp_path / "bridge.db", "SELECT state FROM outbox") == "pending"


async def test_rejected_token_is_one_clear_error_and_exit_3(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.reject_token()
    process = BridgeProcess(bridge_env(tmp_path, telegram, adtarget), tmp_path / "bridge.log")
    await process.start()
    try:
        assert await process.wait(30) == 3
    finally:
        await process.ensure_dead()
    log = process.log()
    assert "Telegram rejected the bot token (401 Unauthorized): check BOT_TOKEN" in log
    assert telegram.token not in log
    assert telegram.token.split(":")[1] not in log
    assert "Traceback" not in log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_telegram_unreachable_at_start_is_retried_until_it_answers(
    tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    port = free_port()
    telegram = FakeTelegram()
    env = bridge_env(tmp_path, telegram, adtarget, backoff_cap=0.5)
    env["TELEGRAM_API_URL"] = f"http://127.0.0.1:{port}"
    process = BridgeProcess(env, tmp_path / "bridge.log")
    await process.start()
    try:
        await eventually(
            lambda: process.log().count("Telegram unreachable on getMe") >= 2,
            timeout=30,
            what="retries logged",
        )
        assert process.proc is not None
        assert process.proc.returncode is None, "it must not exit"
        await telegram.start(port=port)
        await telegram.wait_for_call("getUpdates", timeout=15)
        await eventually(
            lambda: "Telegram reachable again" in process.log(), what="recovery logged"
        )
        process.terminate()
        assert await process.wait(10) == 0
    finally:
        await process.ensure_dead()
        await telegram.stop()
