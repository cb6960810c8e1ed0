"""/lead, /fire and /value through the fake Telegram, delivered to the fake AdTarget."""

from __future__ import annotations

import html
import re

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, OWNER, RunningBridge, eventually, sent_to
from tests.harness import ask as ask_html

JOINER = 5001
CHANNEL_ADMIN = 777
OTHER_ADMIN = 778
OTHER_CHANNEL = -1009876543210


@pytest.fixture
async def lead_bridge(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> RunningBridge:
    """A bridge where JOINER came through a visitor link and was reported as a Lead."""
    running = admin_bridge
    url = await running.mint(
        "00000000-0000-4000-8000-00000000a001", fbc="fb.1.1.lead", utm_source="meta"
    )
    telegram.join(CHANNEL_ID, JOINER, url)
    await adtarget.wait_for_conversions(1)
    await running.wait_scalar("SELECT state FROM outbox WHERE kind = 'conversion'", "delivered")
    return running


async def ask(telegram: FakeTelegram, user_id: int, text: str) -> str:
    """The bot's answer as the person reads it; every '<' it sent is markup or escaped."""
    answer = re.sub(r"</?b>", "", await ask_html(telegram, user_id, text))
    assert "<" not in answer, answer
    assert ">" not in answer, answer
    return html.unescape(answer)


def lead_events(adtarget: FakeAdTarget) -> list[str]:
    return [r.path for r in adtarget.received if r.path.endswith("/events")]


async def test_lead_shows_adtarget_beside_the_bridge(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    conversion_id = adtarget.conversions[0]["conversionId"]
    text = await ask(telegram, OWNER, f"/lead {JOINER}")
    assert f"User {JOINER}" in text
    assert "first seen 20" in text
    # AdTarget's side: the conversion with its channel, event and capiStatus.
    assert f"Lead on Test Channel ({CHANNEL_ID}) — capi pending" in text
    assert f"id {conversion_id} (api)" in text
    # The bridge's side: the join, its link and visit, the delivered row.
    assert "attributed join to Test Channel" in text
    assert "visit 00000000-0000-4000-8000-00000000a001" in text
    assert "fbc" in text
    assert "utm_source meta" in text
    assert "conversion Lead: delivered" in text
    assert f"(conversion {conversion_id})" in text

    telegram.leave(CHANNEL_ID, JOINER)
    await lead_bridge.wait_scalar("SELECT count(*) FROM leaves", 1)
    assert "  left 20" in await ask(telegram, OWNER, f"/lead {JOINER}")


async def test_lead_for_someone_unknown_says_so_on_both_sides(
    lead_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    text = await ask(telegram, OWNER, "/lead 123")
    assert "AdTarget has no lead for user 123." in text
    assert "nothing recorded" in text


async def test_bad_arguments_get_the_usage_line_and_the_reason(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    text = await ask(telegram, OWNER, "/lead abc")
    assert text.startswith("Usage: /lead <telegram-user-id>")
    assert "telegram-user-id: 'abc' is not a Telegram user id (a positive number)" in text

    text = await ask(telegram, OWNER, f"/fire {JOINER} Purchase")
    assert text.startswith("Usage: /fire <telegram-user-id> <Lead|Purchase|")
    assert "value: a Purchase needs a value > 0" in text
    text = await ask(telegram, OWNER, f"/fire {JOINER} Purchase 0 EUR")
    assert "value: a Purchase needs a value > 0" in text
    text = await ask(telegram, OWNER, f"/fire {JOINER} Purchase 10 euro")
    assert "currency: must be an ISO 4217 code" in text
    text = await ask(telegram, OWNER, f"/fire {JOINER} Visit")
    assert "event: unknown event type 'Visit'" in text
    text = await ask(telegram, OWNER, f"/fire {JOINER} Purchase 10")
    assert "value and currency go together" in text

    text = await ask(telegram, OWNER, f"/value {JOINER} cv 5")
    assert text.startswith("Usage: /value <telegram-user-id> <conversion-id> <value> <currency>")
    text = await ask(telegram, OWNER, f"/value {JOINER} cv -5 EUR")
    assert "value: Input should be greater than 0" in text
    # Nothing reached AdTarget's follow-up endpoints, nothing was queued.
    assert lead_events(adtarget) == []
    assert await lead_bridge.scalar("SELECT count(*) FROM outbox WHERE kind != 'conversion'") == 0


async def test_fire_queues_a_purchase_that_reaches_adtarget_once(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    text = await ask(telegram, OWNER, f"/fire {JOINER} Purchase 19.99 EUR")
    assert f"Purchase for user {JOINER} queued as outbox row #" in text
    await eventually(lambda: len(adtarget.events) == 1, what="follow-up delivered")
    (event,) = adtarget.events
    assert event["telegramUserId"] == JOINER
    assert event["eventType"] == "Purchase"
    assert (event["value"], event["currency"]) == (19.99, "EUR")
    assert event["channelId"] == str(CHANNEL_ID)  # AdTarget took the lead's channel
    assert event["idempotencyKey"].startswith("jb-fire-")
    await lead_bridge.wait_scalar("SELECT state FROM outbox WHERE kind = 'lead_event'", "delivered")
    text = await ask(telegram, OWNER, f"/fire {JOINER} Custom:Retained7d")
    assert "Custom:Retained7d for user" in text
    await eventually(lambda: len(adtarget.events) == 2, what="custom follow-up delivered")
    assert adtarget.events[1]["customEventName"] == "Retained7d"
    keys = {e["idempotencyKey"] for e in adtarget.events}
    assert len(keys) == 2, "each admin action has its own key"
    screen = await ask(telegram, OWNER, f"/lead {JOINER}")
    assert "Purchase on Test Channel" in screen
    assert "value 19.99 EUR" in screen
    assert "follow-up event Custom:Retained7d: delivered" in screen


async def test_fire_for_an_unknown_lead_is_refused_plainly(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    text = await ask(telegram, OWNER, "/fire 123 Lead")
    assert text == "AdTarget has no lead for user 123; nothing queued."
    assert lead_events(adtarget) == []


async def test_a_404_at_delivery_parks_the_row_and_tells_the_admins(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # The lead is there when /fire looks, gone when the courier delivers.
    adtarget.fail(404, "LEAD_NOT_FOUND", "no lead", paths=(f"/api/v1/leads/{JOINER}/events",))
    assert "queued" in await ask(telegram, OWNER, f"/fire {JOINER} Subscribe")
    await lead_bridge.wait_scalar("SELECT state FROM outbox WHERE kind = 'lead_event'", "parked")
    reason = await lead_bridge.scalar("SELECT parked_reason FROM outbox WHERE kind = 'lead_event'")
    assert reason == f"AdTarget has no lead for user {JOINER} (HTTP 404 LEAD_NOT_FOUND: no lead)"
    await eventually(
        lambda: any("AdTarget has no lead for user" in t for t in sent_to(telegram, OWNER)),
        what="parked alert",
    )


async def test_value_for_a_conversion(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    conversion_id = adtarget.conversions[0]["conversionId"]
    text = await ask(telegram, OWNER, f"/value {JOINER} nope-123 5 EUR")
    assert text == f"AdTarget has no conversion nope-123 for user {JOINER}; nothing queued."
    assert adtarget.values == []

    text = await ask(telegram, OWNER, f"/value {JOINER} {conversion_id} 49.90 USD")
    assert f"Value 49.9 USD for conversion {conversion_id} of user {JOINER} queued" in text
    await eventually(lambda: len(adtarget.values) == 1, what="value delivered")
    assert adtarget.values[0] == {
        "value": 49.9,
        "currency": "USD",
        "telegramUserId": JOINER,
        "conversionId": conversion_id,
    }


async def test_conversion_not_found_at_delivery_is_said_plainly(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    conversion_id = adtarget.conversions[0]["conversionId"]
    adtarget.fail(404, "CONVERSION_NOT_FOUND", "gone", paths=(f"/api/v1/leads/{JOINER}/conv",))
    assert "queued" in await ask(telegram, OWNER, f"/value {JOINER} {conversion_id} 5 EUR")
    await lead_bridge.wait_scalar(
        "SELECT state FROM outbox WHERE kind = 'conversion_value'", "parked"
    )
    reason = await lead_bridge.scalar(
        "SELECT parked_reason FROM outbox WHERE kind = 'conversion_value'"
    )
    assert reason.startswith(f"AdTarget has no conversion {conversion_id} for user {JOINER}")


async def test_who_may_ask(
    lead_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    for command in (f"/lead {JOINER}", f"/fire {JOINER} Lead", f"/value {JOINER} c 1 EUR"):
        text = await ask(telegram, 999, command)
        assert text.startswith("Sorry, this bot only answers the admins"), command
    # An admin of another tracked channel: refused for a user of this one.
    telegram.add_channel(OTHER_CHANNEL, "Second Channel")
    await lead_bridge.track_channel(telegram, OTHER_CHANNEL)
    telegram.join(OTHER_CHANNEL, OTHER_ADMIN, new_status="administrator")
    for command in (f"/lead {JOINER}", f"/fire {JOINER} Lead", f"/value {JOINER} c 1 EUR"):
        text = await ask(telegram, OTHER_ADMIN, command)
        assert text == f"Sorry, user {JOINER} has not joined any channel of yours.", command
    assert lead_events(adtarget) == []

    # An admin of the user's channel may, and the event is pinned to that channel.
    telegram.join(CHANNEL_ID, CHANNEL_ADMIN, new_status="administrator")
    text = await ask(telegram, CHANNEL_ADMIN, f"/lead {JOINER}")
    assert "attributed join to Test Channel" in text
    assert "queued" in await ask(telegram, CHANNEL_ADMIN, f"/fire {JOINER} CompleteRegistration")
    await eventually(lambda: len(adtarget.events) == 1, what="follow-up delivered")
    assert adtarget.events[0]["channelId"] == str(CHANNEL_ID)
    assert await lead_bridge.scalar("SELECT chat_id FROM outbox WHERE kind = 'lead_event'") == (
        CHANNEL_ID
    )
