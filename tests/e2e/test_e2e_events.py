"""A channel's join event through the real bridge: /event refuses a Purchase
without a value, takes `Purchase 9.99 EUR` and the joins carry it to AdTarget;
the AdTarget channel sync follows the same rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import (
    CHANNEL_ID,
    CHANNEL_TITLE,
    OWNER,
    RunningBridge,
    ask,
    bridge_settings,
    write,
)

ADTARGET_CHANNEL = "ch_events"
EVENT = "SELECT event_type, event_value, event_currency FROM channels WHERE chat_id = ?"


def site(event_type: str | None) -> list[dict[str, Any]]:
    channel: dict[str, Any] = {
        "channelId": ADTARGET_CHANNEL,
        "telegramChannelId": str(CHANNEL_ID),
        "title": CHANNEL_TITLE,
    }
    if event_type:
        channel["eventType"] = event_type
    return [channel]


async def stored(running: RunningBridge) -> tuple[Any, ...]:
    row = await running.bridge.db.fetchone(EVENT, (CHANNEL_ID,))
    assert row is not None
    return tuple(row)


async def join(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget, user: int
) -> dict[str, Any]:
    """An attributed join of `user`; the conversion AdTarget received for it."""
    url = await running.mint(f"00000000-0000-4000-8000-{user:012d}", fbc=f"fb.1.1.{user}")
    before = len(adtarget.conversions)
    telegram.join(CHANNEL_ID, user, url)
    conversions = await adtarget.wait_for_conversions(before + 1)
    (conversion,) = [c for c in conversions if c["telegramUserId"] == user]
    return conversion


async def test_a_purchase_needs_a_value_and_joins_carry_it(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    refused = await ask(telegram, OWNER, "/event Test Purchase")
    assert "A Purchase needs a value and a currency" in refused
    assert "/event Test Purchase 9.99 EUR" in refused
    assert "ad platforms drop a Purchase without a value" in refused
    assert "was not changed" in refused
    assert await stored(admin_bridge) == (None, None, None)
    half = await ask(telegram, OWNER, "/event Test Purchase 9.99")
    assert "the value and the currency go together" in half
    bad_currency = await ask(telegram, OWNER, "/event Test Purchase 9.99 euro")
    assert "ISO 4217" in bad_currency
    assert "more than 0" in await ask(telegram, OWNER, "/event Test Purchase 0 EUR")
    assert await stored(admin_bridge) == (None, None, None)

    accepted = await ask(telegram, OWNER, "/event Test Purchase 9.99 EUR")
    assert "reported as <b>Purchase</b>, worth <b>9.99 EUR</b> each" in accepted
    assert await stored(admin_bridge) == ("Purchase", 9.99, "EUR")
    assert "event: Purchase, value 9.99 EUR" in await ask(telegram, OWNER, "/channels")
    conversion = await join(admin_bridge, telegram, adtarget, 601)
    assert conversion["eventType"] == "Purchase"
    assert conversion["value"] == 9.99
    assert conversion["currency"] == "EUR"

    # Back to Lead: the value goes with the Purchase.
    assert "reported as <b>Lead</b>." in await ask(telegram, OWNER, "/event Test Lead")
    assert await stored(admin_bridge) == ("Lead", None, None)
    assert "event: Lead\n" in await ask(telegram, OWNER, "/channels")
    lead = await join(admin_bridge, telegram, adtarget, 602)
    assert lead["eventType"] == "Lead"
    assert "value" not in lead
    assert "currency" not in lead


async def test_a_channel_admin_gets_the_same_rule(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    telegram.join(CHANNEL_ID, 777, new_status="administrator")
    assert "A Purchase needs a value" in await ask(telegram, 777, "/event Test Purchase")
    assert "worth <b>5 USD</b>" in await ask(telegram, 777, "/event Test Purchase 5 usd")
    # A stranger learns nothing, whatever the arguments.
    assert (await ask(telegram, 999, "/event Test Purchase")).startswith("Sorry")


@pytest.fixture
async def site_event(request: pytest.FixtureRequest) -> AsyncIterator[FakeAdTarget]:
    """AdTarget whose site holds the test channel with the event type the test's
    parameter names."""
    fake = FakeAdTarget(channels=site(request.param))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.mark.parametrize("site_event", ["Purchase"], indirect=True)
async def test_the_sync_does_not_take_a_purchase_without_a_value(
    tmp_path: Path, telegram: FakeTelegram, site_event: FakeAdTarget
) -> None:
    adtarget = site_event
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, admin_ids=str(OWNER)))
    await running.start()
    try:
        await running.track_channel(telegram)
        reply = await ask(telegram, OWNER, "/sync")
        assert "AdTarget channels synced: 1 mapped." in reply
        assert f"{CHANNEL_TITLE}: AdTarget says its event is Purchase, but a Purchase" in reply
        assert f"Set a value with /event {CHANNEL_ID} Purchase &lt;value&gt;" in reply
        assert await running.scalar("SELECT adtarget_channel_id FROM channels") == ADTARGET_CHANNEL
        assert await running.scalar("SELECT adtarget_event_type FROM channels") is None
        # Reported as DEFAULT_EVENT_TYPE, never as a Purchase without a value.
        conversion = await join(running, telegram, adtarget, 701)
        assert conversion["eventType"] == "Lead"
        assert conversion["channelId"] == ADTARGET_CHANNEL

        # With a value, AdTarget's Purchase is taken.
        await ask(telegram, OWNER, "/event Test Purchase 19.5 USD")
        assert "Purchase" not in await ask(telegram, OWNER, "/sync")
        assert await running.scalar("SELECT adtarget_event_type FROM channels") == "Purchase"

        # The owner goes back to Lead (the value goes); AdTarget's Purchase no longer
        # fits, and the one stored before breaks the rule as well: none is kept.
        await ask(telegram, OWNER, "/event Test Lead")
        assert "AdTarget says its event is Purchase" in await ask(telegram, OWNER, "/sync")
        assert await running.scalar("SELECT adtarget_event_type FROM channels") is None

    finally:
        assert await running.stop() == 0


@pytest.mark.parametrize("site_event", ["Subscribe"], indirect=True)
async def test_the_sync_takes_any_other_event_type(
    tmp_path: Path, telegram: FakeTelegram, site_event: FakeAdTarget
) -> None:
    running = RunningBridge(bridge_settings(tmp_path, telegram, site_event, admin_ids=str(OWNER)))
    await running.start()
    try:
        await running.track_channel(telegram)
        assert (await ask(telegram, OWNER, "/sync")).endswith("1 mapped.")
        assert await running.scalar("SELECT adtarget_event_type FROM channels") == "Subscribe"
        assert (await join(running, telegram, site_event, 702))["eventType"] == "Subscribe"
        assert "event: Subscribe" in await ask(telegram, OWNER, "/channels")
    finally:
        assert await running.stop() == 0


async def test_a_valueless_purchase_from_before_the_rule_is_not_sent(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # A row as an older release could leave it: Purchase, no value.
    await write(
        admin_bridge.bridge.db,
        lambda tx: tx.execute(
            "UPDATE channels SET event_type = 'Purchase' WHERE chat_id = ?", (CHANNEL_ID,)
        ),
    )
    conversion = await join(admin_bridge, telegram, adtarget, 801)
    assert conversion["eventType"] == "Lead"
    assert "event: Lead" in await ask(telegram, OWNER, "/channels")
