"""Privacy through the real bridge: /forget for ADMIN_IDS only, a forgotten person's
queued conversion never sent, and the RETENTION_DAYS sweep at start keeping /stats."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiogram.types import ChatMemberUpdated, TelegramObject

from bot import cli
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, OWNER, RunningBridge, ask, bridge_settings

ALICE, BOB = 8800001, 8800002
TEMP_ALICE = "0a0a0a0a-0000-4000-8000-000000000001"
TEMP_BOB = "0b0b0b0b-0000-4000-8000-000000000002"
PAGE = "https://landing.example/offer?fbclid=IwAR_alice&utm_source=meta"
DAY = 86400


async def visit_link(running: RunningBridge, temp_id: str, ip: str) -> str:
    """A landing-page visit and its invite link, over the tracker's HTTP API."""
    async with httpx.AsyncClient(base_url=running.bridge.tracker_url, timeout=10) as http:
        visit = await http.post(
            "/api/v1/events/visit",
            json={"tempId": temp_id, "href": PAGE, "referrer": "https://m.facebook.com/"},
            headers={"X-Adtarget-Client-IP": ip, "X-Adtarget-Client-User-Agent": "Mozilla/5.0 T"},
        )
        assert visit.status_code == 200
        invite = await http.post(
            "/api/v1/events/invite", json={"tempId": temp_id, "channelId": str(CHANNEL_ID)}
        )
        assert invite.status_code == 200
        return str(invite.json()["inviteLink"])


async def test_forget_is_for_admin_ids_and_a_queued_conversion_is_never_sent(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    assert "paused" in await ask(telegram, OWNER, "/pause")
    url_alice = await visit_link(admin_bridge, TEMP_ALICE, "203.0.113.1")
    url_bob = await visit_link(admin_bridge, TEMP_BOB, "203.0.113.2")
    telegram.join(CHANNEL_ID, ALICE, url_alice)
    telegram.join(CHANNEL_ID, BOB, url_bob)
    await admin_bridge.wait_scalar(
        "SELECT count(*) FROM outbox WHERE kind = 'conversion' AND state = 'pending'", 2
    )

    # A stranger, and even an admin of the channel, may not erase anyone.
    telegram.join(CHANNEL_ID, 777, new_status="administrator")
    for who in (999, 777):
        assert "Only the bridge's admins" in await ask(telegram, who, f"/forget {ALICE}")
    assert await admin_bridge.scalar("SELECT count(*) FROM joins WHERE user_id = ?", (ALICE,)) == 1
    assert "Usage: /forget" in await ask(telegram, OWNER, "/forget alice")

    reply = await ask(telegram, OWNER, f"/forget {ALICE}")
    assert f"Forgot user {ALICE}" in reply
    assert "joins: 1 row(s) deleted" in reply
    assert "visits: 1 row(s) deleted" in reply
    # Her conversion and her visit's forward to AdTarget.
    assert "outbox: 2 row(s) deleted" in reply
    assert "updates: 1 row(s) deleted" in reply
    assert "invite_links: 1 row(s) kept" in reply
    user_in_update = admin_bridge.bridge.db.dialect.json_text(
        "raw", ("chat_member", "new_chat_member", "user", "id")
    )
    for sql, param in (
        ("SELECT count(*) FROM joins WHERE user_id = ?", ALICE),
        ("SELECT count(*) FROM outbox WHERE telegram_user_id = ?", ALICE),
        (f"SELECT count(*) FROM updates WHERE {user_in_update} = ?", str(ALICE)),  # noqa: S608
    ):
        assert await admin_bridge.scalar(sql, (param,)) == 0, sql
    assert (
        await admin_bridge.scalar("SELECT count(*) FROM visits WHERE temp_id = ?", (TEMP_ALICE,))
        == 0
    )

    # Sending resumes: Bob's conversion and visit go out, nothing of Alice's ever does.
    assert "resumed" in await ask(telegram, OWNER, "/resume")
    await admin_bridge.wait_scalar(
        "SELECT count(*) FROM outbox WHERE state != 'delivered'", 0, timeout=20
    )
    conversions = adtarget.received_on("/api/v1/events/conversion")
    assert [c.body["telegramUserId"] for c in conversions] == [BOB]
    sent = json.dumps([r.body for r in adtarget.received]) + json.dumps(
        [r.headers for r in adtarget.received]
    )
    assert TEMP_ALICE not in sent
    assert "203.0.113.1" not in sent
    assert await admin_bridge.scalar("SELECT count(*) FROM joins WHERE user_id = ?", (BOB,)) == 1


def _age(database: Path, days: float) -> None:
    then = time.time() - days * DAY
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE visits SET created_at = ?, updated_at = ?", (then, then))
        conn.execute("UPDATE outbox SET created_at = ?", (then,))
    conn.close()


@pytest.mark.one_engine  # ages the rows in the SQLite file between two runs
async def test_sweep_at_start_clears_old_rows_and_stats_stay(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    settings = bridge_settings(tmp_path, telegram, adtarget, admin_ids=str(OWNER))
    running = RunningBridge(settings)
    await running.start()
    try:
        await running.track_channel(telegram)
        url = await visit_link(running, TEMP_ALICE, "203.0.113.1")
        telegram.join(CHANNEL_ID, ALICE, url)
        await adtarget.wait_for_conversions(1)
        await running.wait_scalar("SELECT count(*) FROM outbox WHERE state != 'delivered'", 0)
        stats_before = await ask(telegram, OWNER, "/stats all")
        assert "privacy-sweep" in {t.get_name() for t in asyncio.all_tasks()}
    finally:
        assert await running.stop() == 0

    _age(settings.database_path, 91)
    running = RunningBridge(settings)
    await running.start()
    try:
        await running.wait_scalar("SELECT count(*) FROM visits WHERE scrubbed_at IS NULL", 0)
        await running.wait_scalar("SELECT count(*) FROM outbox WHERE scrubbed_at IS NULL", 0)
        visit = await running.bridge.db.fetchone("SELECT * FROM visits")
        assert visit is not None
        assert (visit["client_ip"], visit["user_agent"], visit["href"], visit["fbc"]) == (
            None,
            None,
            None,
            None,
        )
        for row in await running.bridge.db.fetchall("SELECT body, headers FROM outbox"):
            assert "203.0.113.1" not in row["body"] + (row["headers"] or "")
            assert "IwAR_alice" not in row["body"]
        assert await ask(telegram, OWNER, "/stats all") == stats_before
    finally:
        assert await running.stop() == 0


async def test_retention_zero_keeps_everything(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, retention_days=0))
    await running.start()
    try:
        assert "privacy-sweep" not in {t.get_name() for t in asyncio.all_tasks()}
    finally:
        assert await running.stop() == 0


@pytest.mark.one_engine  # forgets through `--database`: the SQLite file
async def test_cli_forget_while_the_bridge_runs(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    url = await visit_link(admin_bridge, TEMP_ALICE, "203.0.113.1")
    telegram.join(CHANNEL_ID, ALICE, url)
    await adtarget.wait_for_conversions(1)
    database = str(admin_bridge.settings.database_path)
    status = await asyncio.to_thread(cli.main, ["forget", str(ALICE), "--database", database])
    assert status == 0
    assert await admin_bridge.scalar("SELECT count(*) FROM joins") == 0
    assert await admin_bridge.scalar("SELECT count(*) FROM visits") == 0
    # The bridge goes on as before.
    telegram.join(CHANNEL_ID, BOB, await visit_link(admin_bridge, TEMP_BOB, "203.0.113.2"))
    await admin_bridge.wait_scalar("SELECT user_id FROM joins", BOB)


@pytest.mark.one_engine  # forgets through `--database`: the SQLite file
async def test_a_forget_between_storing_and_handling_is_not_undone(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    database = str(admin_bridge.settings.database_path)
    forgot: list[int] = []

    # Through aiogram's public middleware API, in front of the real join handler:
    # Alice's join is stored and confirmed, and `python -m bot forget` commits
    # before the handler sees it, as an owner's timing could make happen.
    async def forget_first(
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if isinstance(event, ChatMemberUpdated) and event.new_chat_member.user.id == ALICE:
            args = ["forget", str(ALICE), "--database", database]
            forgot.append(await asyncio.to_thread(cli.main, args))
        return await handler(event, data)

    admin_bridge.bridge.dispatcher.chat_member.outer_middleware(forget_first)
    telegram.join(CHANNEL_ID, ALICE, await visit_link(admin_bridge, TEMP_ALICE, "203.0.113.1"))
    telegram.join(CHANNEL_ID, BOB, await visit_link(admin_bridge, TEMP_BOB, "203.0.113.2"))
    # Updates are handled in order: once Bob's conversion is out, Alice's was handled.
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == BOB
    assert forgot == [0]
    assert await admin_bridge.scalar("SELECT count(*) FROM joins WHERE user_id = ?", (ALICE,)) == 0
    assert (
        await admin_bridge.scalar(
            "SELECT count(*) FROM outbox WHERE telegram_user_id = ?", (ALICE,)
        )
        == 0
    )
    assert await admin_bridge.scalar("SELECT count(*) FROM joins WHERE user_id = ?", (BOB,)) == 1
