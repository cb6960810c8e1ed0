"""The stay signal end to end: /stay through the fake Telegram, joins,
getChatMember at due time, follow-up events at the fake AdTarget.

Joins are sent dated days back, so their checks are due as soon as they are
recorded (days are real days in the bridge).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, OWNER, RunningBridge, ask, bridge_settings, eventually

DAY = 86400
EVENTS_PATH = "/api/v1/leads/{}/events"


@pytest.fixture
def running(admin_bridge: RunningBridge) -> RunningBridge:
    """A bridge with OWNER in ADMIN_IDS and the channel tracked (`admin_bridge`)."""
    return admin_bridge


async def attributed_join(running: RunningBridge, telegram: FakeTelegram, user_id: int) -> None:
    """A visitor's link, joined eight days ago."""
    url = await running.mint(f"00000000-0000-4000-8000-{user_id:012d}", fbc=f"fb.1.1.{user_id}")
    telegram.join(CHANNEL_ID, user_id, url, date=int(time.time()) - 8 * DAY)


def member_checks(telegram: FakeTelegram, user_id: int) -> int:
    return len([c for c in telegram.calls_to("getChatMember") if c.params["user_id"] == user_id])


async def check_state(running: RunningBridge, user_id: int) -> object:
    return await running.scalar("SELECT state FROM stay_checks WHERE user_id = ?", (user_id,))


async def test_a_member_who_stayed_gets_exactly_one_follow_up_event(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    reply = await ask(telegram, OWNER, "/stay Test 7 Custom:Retained7d")
    assert "Custom:Retained7d" in reply
    assert "joins from now on" in reply
    await attributed_join(running, telegram, 701)
    await eventually(lambda: len(adtarget.events) == 1, what="the follow-up event")
    (event,) = adtarget.events
    assert event["telegramUserId"] == 701
    assert event["channelId"] == str(CHANNEL_ID)
    assert (event["eventType"], event["customEventName"]) == ("Custom", "Retained7d")
    assert abs(event["eventTime"] - time.time() * 1000) < 3600 * 1000  # the check's time
    (request,) = adtarget.received_on(EVENTS_PATH.format(701))
    assert request.headers["idempotency-key"].startswith(f"jb-stay-{CHANNEL_ID}-701-")
    assert len(adtarget.conversions) == 1  # the join's own conversion came first
    await running.wait_scalar("SELECT state FROM stay_checks", "sent")
    assert await running.stop() == 0
    assert member_checks(telegram, 701) == 1
    assert len(adtarget.events) == 1


async def test_a_member_who_left_with_an_update_gets_nothing(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await ask(telegram, OWNER, "/stay Test 7 Subscribe")
    await attributed_join(running, telegram, 702)
    left_at = int(time.time()) - 2 * DAY
    telegram.leave(CHANNEL_ID, 702, date=left_at)
    await running.wait_scalar("SELECT state FROM stay_checks", "left")
    assert await running.scalar("SELECT status FROM stay_checks") == "left"
    assert await running.scalar("SELECT left_at FROM joins WHERE user_id = 702") == left_at
    assert await running.scalar("SELECT count(*) FROM leaves") == 1
    assert await running.stop() == 0
    assert adtarget.events == []
    assert adtarget.received_on(EVENTS_PATH.format(702)) == []


async def test_a_member_who_left_without_an_update_gets_nothing(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await ask(telegram, OWNER, "/stay Test 7 Lead")
    await attributed_join(running, telegram, 703)
    telegram.leave(CHANNEL_ID, 703, send_update=False)  # Telegram never tells the bot
    await running.wait_scalar("SELECT state FROM stay_checks", "left")
    assert member_checks(telegram, 703) == 1
    # The leave nobody reported is now known: on the join, and in /stats' leaves.
    assert await running.scalar("SELECT left_at FROM joins WHERE user_id = 703") is not None
    assert await running.scalar("SELECT count(*) FROM leaves") == 1
    listing = await ask(telegram, OWNER, "/stay")
    assert "7 day(s) → <b>Lead</b>" in listing
    assert "0 stayed (event queued), 1 left" in listing
    assert await running.stop() == 0
    assert adtarget.events == []


async def test_stay_off_asks_telegram_nothing(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await attributed_join(running, telegram, 704)  # never turned on
    # Recorded before the command: a join recorded while it is on keeps its check
    # even when turned off again before the sweep.
    await running.wait_scalar("SELECT count(*) FROM joins WHERE user_id = 704", 1)
    assert "joins from now on" in await ask(telegram, OWNER, "/stay Test 7 Lead")
    off = await ask(telegram, OWNER, "/stay Test off")
    assert "off for joins from now on" in off
    await attributed_join(running, telegram, 705)  # turned on, then off again
    await adtarget.wait_for_conversions(2)
    newest = await running.scalar("SELECT max(id) FROM joins")
    await running.wait_scalar("SELECT last_join_id >= ? FROM stay_sweep", 1, (newest,))
    assert await running.scalar("SELECT count(*) FROM stay_checks") == 0
    assert await running.stop() == 0
    assert member_checks(telegram, 704) == 0
    assert member_checks(telegram, 705) == 0
    assert adtarget.events == []


async def test_a_restart_between_due_and_sent_does_not_send_twice(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    settings = bridge_settings(tmp_path, telegram, adtarget, admin_ids=str(OWNER))
    # First run: the check is due, but Telegram fails every getChatMember.
    telegram.fail_next("getChatMember", 500, "Internal Server Error", count=1000)
    first = RunningBridge(settings)
    await first.start()
    await first.track_channel(telegram)
    await ask(telegram, OWNER, "/stay Test 7 Custom:Stayed")
    await attributed_join(first, telegram, 706)
    await first.wait_scalar("SELECT attempts > 0 FROM stay_checks", 1)
    assert await check_state(first, 706) == "pending"
    assert await first.stop() == 0
    assert adtarget.events == []

    # Second run: Telegram answers, AdTarget is down: the event is queued, not delivered.
    telegram.clear_faults()
    adtarget.fail(503, "API_DISABLED", paths=(EVENTS_PATH.format(706),))
    second = RunningBridge(settings)
    await second.start()
    await second.wait_scalar("SELECT state FROM stay_checks", "sent")
    await eventually(
        lambda: bool(adtarget.received_on(EVENTS_PATH.format(706))), what="a refused send"
    )
    assert await second.stop() == 0
    assert member_checks(telegram, 706) > 1  # the failures, then the answer

    # Third run: AdTarget is back; the queued event goes out once, nobody asks again.
    asked = member_checks(telegram, 706)
    adtarget.clear_faults()
    third = RunningBridge(settings)
    await third.start()
    await eventually(lambda: len(adtarget.events) == 1, what="the follow-up event")
    await third.wait_scalar("SELECT state FROM outbox WHERE kind = 'lead_event'", "delivered")
    assert await third.scalar("SELECT count(*) FROM outbox WHERE kind = 'lead_event'") == 1
    assert await third.stop() == 0
    assert member_checks(telegram, 706) == asked
    assert len(adtarget.events) == 1
    keys = {r.headers["idempotency-key"] for r in adtarget.received_on(EVENTS_PATH.format(706))}
    assert len(keys) == 1


async def test_telegram_429_is_waited_out(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await ask(telegram, OWNER, "/stay Test 7 Lead")
    telegram.fail_next("getChatMember", 429, "Too Many Requests: retry after 1", retry_after=1)
    await attributed_join(running, telegram, 707)
    await eventually(lambda: len(adtarget.events) == 1, what="the follow-up event")
    calls = [c for c in telegram.calls_to("getChatMember") if c.params["user_id"] == 707]
    assert len(calls) == 2
    assert calls[1].at - calls[0].at >= 0.9  # not asked again before Telegram's wait was up
    assert await running.scalar("SELECT attempts FROM stay_checks") == 0


async def test_a_chat_telegram_does_not_know_fails_the_check_with_its_reason(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await ask(telegram, OWNER, "/stay Test 7 Lead")
    telegram.fail_next("getChatMember", 400, "Bad Request: chat not found")
    await attributed_join(running, telegram, 708)
    await running.wait_scalar("SELECT state FROM stay_checks", "failed")
    assert await running.scalar("SELECT detail FROM stay_checks") == ("Bad Request: chat not found")
    assert "1 failed" in await ask(telegram, OWNER, "/stay")
    assert await running.stop() == 0
    assert member_checks(telegram, 708) == 1
    assert adtarget.events == []


async def test_a_check_whose_conversion_is_parked_fails_instead_of_waiting(
    running: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    await ask(telegram, OWNER, "/stay Test 7 Lead")
    adtarget.fail(400, "INVALID_PAYLOAD", paths=("/api/v1/events/conversion",))
    await attributed_join(running, telegram, 709)
    await running.wait_scalar("SELECT state FROM outbox WHERE telegram_user_id = 709", "parked")
    await running.wait_scalar("SELECT state FROM stay_checks", "failed")
    detail = await running.scalar("SELECT detail FROM stay_checks")
    assert isinstance(detail, str)
    assert detail.startswith("conversion parked (outbox row #")
    assert "1 failed" in await ask(telegram, OWNER, "/stay")
    assert await running.stop() == 0
    assert member_checks(telegram, 709) == 0, "Telegram is not asked for a lead AdTarget lacks"
    assert adtarget.events == []


async def test_the_command_refuses_bad_arguments_and_strangers(
    running: RunningBridge, telegram: FakeTelegram
) -> None:
    purchase = await ask(telegram, OWNER, "/stay Test 7 Purchase")
    assert purchase.startswith("Usage: /stay")
    assert "cannot be Purchase" in purchase
    days = await ask(telegram, OWNER, "/stay Test seven Lead")
    assert "whole number from 1 to 365" in days
    # isdigit() is true for "²", but int() refuses it: answered, not an update that fails.
    superscript = await ask(telegram, OWNER, "/stay Test ² Lead")
    assert superscript.startswith("Usage: /stay")
    assert "whole number from 1 to 365, not “²”" in superscript
    unknown = await ask(telegram, OWNER, "/stay Nope 7 Lead")
    assert "No channel “Nope”" in unknown
    assert "off" in await ask(telegram, OWNER, "/stay")
    stranger = await ask(telegram, 999, "/stay Test 7 Lead")
    assert stranger.startswith("Sorry")
    assert await running.scalar("SELECT stay_signal_days FROM channels") is None
