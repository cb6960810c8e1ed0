"""A join through a minted link becomes exactly one conversion; others none."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import channels
from tests.harness import CHANNEL_ID, RunningBridge, bridge_settings

VISIT = {
    "href": "https://landing.example/join?fbclid=IwAR0abc&utm_source=meta",
    "fbc": "fb.1.1764100000000.IwAR0abc",
    "fbp": "fb.1.1764100000000.987654321",
    "gclid": "Cj0KCQ",
    "ttclid": "E.C.P.tt",
    "sccid": "sc-123",
    "client_ip": "203.0.113.42",
    "user_agent": "Mozilla/5.0 (iPhone) Test",
    "external_user_id": "crm-77",
    "utm_source": "meta",
}


async def test_attributed_join_is_one_conversion_with_every_field(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    url = await bridge.mint("6f1c2d3e-0000-4000-8000-000000000001", **VISIT)
    # The newest personal link's call: the pool may mint the channel's fallback
    # link (a campaign link, "jb-c fallback") meanwhile.
    create = [
        c.params
        for c in telegram.calls_to("createChatInviteLink")
        if not c.raw["name"].startswith("jb-c ")
    ][-1]
    assert create["member_limit"] == 1
    assert create["expire_date"] > 0
    assert len(create["name"]) <= 32

    telegram.join(CHANNEL_ID, 5550001, url, date=1764100123)
    (conversion,) = await adtarget.wait_for_conversions(1)
    expected = {
        "telegramUserId": 5550001,
        "channelId": str(CHANNEL_ID),
        "eventType": "Lead",
        "eventTime": 1764100123000,
        "fbc": VISIT["fbc"],
        "fbp": VISIT["fbp"],
        "gclid": VISIT["gclid"],
        "ttclid": VISIT["ttclid"],
        "sccid": VISIT["sccid"],
        "clientIp": VISIT["client_ip"],
        "userAgent": VISIT["user_agent"],
        "eventSourceUrl": VISIT["href"],
        "externalUserId": VISIT["external_user_id"],
    }
    sent = {
        k: v
        for k, v in conversion.items()
        if k not in ("conversionId", "idempotencyKey", "createdAt")
    }
    assert sent == expected
    assert conversion["idempotencyKey"]
    (request,) = adtarget.received_on("/api/v1/events/conversion")
    assert request.headers["authorization"] == f"Bearer {FakeAdTarget.API_KEY}"
    await bridge.wait_scalar("SELECT state FROM outbox", "delivered")
    assert await bridge.scalar("SELECT conversion_id FROM outbox") == conversion["conversionId"]
    assert await bridge.scalar("SELECT kind FROM joins") == "attributed"


async def test_organic_and_foreign_link_joins_send_nothing(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.join(CHANNEL_ID, 5550002)
    # A link another admin made comes back masked: it cannot be matched.
    last = telegram.join(CHANNEL_ID, 5550003, "https://t.me/+SomeoneElsesLinkXYZ")
    assert last is not None
    await telegram.wait_confirmed(last)
    await bridge.wait_scalar("SELECT count(*) FROM joins WHERE kind = 'organic'", 2)
    await asyncio.sleep(0.2)
    assert adtarget.conversions == []
    assert await bridge.scalar("SELECT count(*) FROM outbox") == 0


async def test_send_organic_reports_without_attribution(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, send_organic=True))
    await running.start()
    try:
        await running.track_channel(telegram)
        telegram.join(CHANNEL_ID, 5550004, date=1764100000)
        (conversion,) = await adtarget.wait_for_conversions(1)
        assert conversion["telegramUserId"] == 5550004
        assert "fbc" not in conversion
        assert "eventSourceUrl" not in conversion
    finally:
        assert await running.stop() == 0


async def test_second_update_for_the_same_join_sends_nothing_more(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    url = await bridge.mint("6f1c2d3e-0000-4000-8000-000000000002", fbc="fb.1.1.x")
    first = telegram.join(CHANNEL_ID, 5550005, url, date=1764100200)
    assert first is not None
    await adtarget.wait_for_conversions(1)
    # Telegram reporting the same join again (same chat, user and link).
    update = telegram.history[first]
    again = telegram.enqueue("chat_member", update["chat_member"])
    assert again is not None
    await telegram.wait_confirmed(again)
    await asyncio.sleep(0.3)
    assert len(adtarget.conversions) == 1
    assert len(adtarget.received_on("/api/v1/events/conversion")) == 1
    assert await bridge.scalar("SELECT count(*) FROM joins") == 1


async def test_redelivered_batch_after_restart_is_not_reported_again(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    settings = bridge_settings(tmp_path, telegram, adtarget)
    first = RunningBridge(settings)
    await first.start()
    await first.track_channel(telegram)
    url = await first.mint("6f1c2d3e-0000-4000-8000-000000000003", fbp="fb.1.2.y")
    join = telegram.join(CHANNEL_ID, 5550006, url)
    assert join is not None
    await adtarget.wait_for_conversions(1)
    assert await first.stop() == 0

    # The confirmation was lost: Telegram serves the batch again to the new poller.
    telegram.requeue(join)
    second = RunningBridge(settings)
    await second.start()
    try:
        await telegram.wait_confirmed(join)
        await asyncio.sleep(0.3)
        assert len(adtarget.conversions) == 1
        assert await second.scalar("SELECT count(*) FROM joins") == 1
    finally:
        assert await second.stop() == 0


async def test_channel_event_type_is_used(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await channels.set_event_type(bridge.bridge.db, CHANNEL_ID, "Subscribe")
    url = await bridge.mint("6f1c2d3e-0000-4000-8000-000000000004", fbc="fb.1.1.z")
    telegram.join(CHANNEL_ID, 5550007, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["eventType"] == "Subscribe"


async def test_leave_is_recorded_without_a_conversion(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    url = await bridge.mint("6f1c2d3e-0000-4000-8000-000000000005", fbc="fb.1.1.q")
    telegram.join(CHANNEL_ID, 5550008, url, date=1764100300)
    await adtarget.wait_for_conversions(1)
    telegram.leave(CHANNEL_ID, 5550008, date=1764100400)
    await bridge.wait_scalar("SELECT left_at FROM joins WHERE user_id = 5550008", 1764100400)
    assert len(adtarget.conversions) == 1


async def test_bot_removed_marks_channel_inactive(
    bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    telegram.bot_status_change(CHANNEL_ID, "left")
    await bridge.wait_scalar("SELECT active FROM channels WHERE chat_id = ?", 0, (CHANNEL_ID,))
