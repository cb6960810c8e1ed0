"""The tracker's health and bounds, end to end: /healthz's status and who sees its
details, the per-client visit quota, the free-disk floor, slow bodies, and the
alert for a Telegram that stopped answering."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.e2e.test_e2e_tracker_clients import STRANGER, VISIT, client_at, raw_request
from tests.harness import (
    CHANNEL_ID,
    OWNER,
    RunningBridge,
    StartBridge,
    bridge_settings,
    eventually,
    sent_to,
    write,
)
from tests.unit.ops.test_metrics import scrape, value

PAGE = "https://landing.example/?utm_source=meta"
MINIMAL = {"status": "ok"}


async def test_healthz_details_only_for_this_host_without_a_token(
    start_bridge: StartBridge,
) -> None:
    running = await start_bridge(trusted_proxies="127.0.0.1")
    async with client_at(running, "127.0.0.1") as local:
        details = await local.get("/healthz")
        forwarded = await local.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
    async with client_at(running, STRANGER) as stranger:
        outside = await stranger.get("/healthz")
    assert details.status_code == 200
    assert details.json()["invitePools"][0]["channelId"] == str(CHANNEL_ID)
    assert details.json()["tracker"] == {"serving": True, "storageLow": False}
    # A request a local proxy forwarded from outside is not local.
    for answer in (forwarded, outside):
        assert answer.status_code == 200
        assert answer.json() == MINIMAL


async def test_healthz_details_only_for_the_token_when_one_is_set(
    start_bridge: StartBridge,
) -> None:
    running = await start_bridge(tracker_token="health-token-1")
    async with client_at(running, "127.0.0.1") as local:
        without = await local.get("/healthz")
        bearing = await local.get("/healthz", headers={"Authorization": "Bearer health-token-1"})
    assert without.json() == MINIMAL
    assert "invitePools" in bearing.json()


async def test_a_clients_visits_are_capped_per_hour(start_bridge: StartBridge) -> None:
    running = await start_bridge(trusted_proxies="127.0.0.1", tracker_visits_per_hour=3)
    async with client_at(running, STRANGER) as flood:
        statuses = [(await flood.post(VISIT, json={"href": PAGE})).status_code for _ in range(5)]
        # A returning visitor (its tempId cookie) is no new visit: its link is served.
        returning = await flood.get("/track/invite", params={"channelId": str(CHANNEL_ID)})
        flood.cookies.clear()
        click = await flood.get("/track/invite", params={"channelId": str(CHANNEL_ID)})
    assert statuses == [200, 200, 200, 429, 429]
    assert returning.status_code == 302
    assert click.status_code == 429  # a click without tempId is a new visit
    async with client_at(running, "127.0.0.3") as other:
        assert (await other.post(VISIT, json={"href": PAGE})).status_code == 200


async def test_under_the_disk_floor_visits_are_refused_and_joins_still_counted(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # A floor no disk reaches: the watchdog reports it low from the start.
    running = await start_bridge(admin_ids=str(OWNER), min_free_disk_mb=10**9)
    async with httpx.AsyncClient(base_url=running.bridge.tracker_url) as http:
        visit = await http.post(VISIT, json={"href": PAGE})
        health = await http.get("/healthz")
    assert visit.status_code == 503
    assert visit.json()["error"]["code"] == "STORAGE_LOW"
    assert health.status_code == 503
    assert health.json()["tracker"] == {"serving": False, "storageLow": True}
    await eventually(
        lambda: any("MB free" in t for t in sent_to(telegram, OWNER)), what="disk alert"
    )
    url = await running.mint("17171717-0000-4000-8000-00000000d15c")
    telegram.join(CHANNEL_ID, 17001, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 17001


async def test_a_body_sent_too_slowly_is_a_json_408(start_bridge: StartBridge) -> None:
    running = await start_bridge(tracker_body_timeout=0.3)
    head = (
        b"POST /api/v1/events/visit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nConnection: close\r\n\r\n"
    )
    status, body = await raw_request(running, head + b'{"href": ')  # and then nothing
    assert status == 408
    assert b'"REQUEST_TIMEOUT"' in body


async def test_telegram_unanswered_is_an_alert_once_and_resolved(
    start_bridge: StartBridge, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_bridge(admin_ids=str(OWNER), poll_alert_minutes=0.01)
    port = int(telegram.url.rsplit(":", 1)[1])
    await telegram.stop()
    await eventually(
        lambda: "alert telegram-not-polled" in caplog.text, what="alert raised", timeout=15
    )
    await asyncio.sleep(0.5)  # several checks while Telegram stays down
    assert caplog.text.count("alert telegram-not-polled") == 1
    await telegram.start(port=port)
    await eventually(
        lambda: any("has not answered getUpdates" in t for t in sent_to(telegram, OWNER)),
        what="alert delivered once Telegram answers",
        timeout=15,
    )
    await eventually(lambda: not running.bridge.watchdog.polling_late, what="resolved")


async def test_the_last_poll_metric_exists_before_telegram_ever_answered(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await telegram.stop()  # Telegram unreachable from the start
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget))
    await running.start()
    try:
        samples = await scrape(running.bridge)
        assert ("joinbridge_telegram_last_poll_timestamp_seconds", frozenset()) in samples
        assert value(samples, "joinbridge_telegram_last_poll_timestamp_seconds") == 0.0
    finally:
        assert await running.stop() == 0


@pytest.mark.one_engine  # the fault is a SQLite trigger
async def test_one_visit_that_cannot_be_stored_fails_alone(start_bridge: StartBridge) -> None:
    running = await start_bridge(trusted_proxies="127.0.0.1")
    # A fault in the database itself, for one visit only (not a patch of our code).
    await write(
        running.bridge.db,
        lambda tx: tx.execute(
            "CREATE TRIGGER poisoned_visit BEFORE INSERT ON visits"
            " WHEN NEW.href LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        ),
    )
    async with client_at(running, STRANGER) as http:
        # Sent together: the writer commits them as one batch.
        answers = await asyncio.gather(
            *(
                http.post(
                    VISIT,
                    json={"href": f"https://landing.example/{'poison' if n == 4 else n}"},
                )
                for n in range(10)
            )
        )
    statuses = [a.status_code for a in answers]
    assert statuses[4] == 500
    assert answers[4].json()["error"]["code"] == "INTERNAL_ERROR"
    assert statuses[:4] + statuses[5:] == [200] * 9
    assert await running.scalar("SELECT count(*) FROM visits") == 9
