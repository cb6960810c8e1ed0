"""The admin experience through the fake Telegram: onboarding, commands, alerts."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from bot.adtarget.dispatch import NO_SIGNAL
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import (
    CHANNEL_ID,
    OWNER,
    RunningBridge,
    ask,
    bridge_settings,
    eventually,
    sent_to,
)

OTHER_CHANNEL = -1009876543210
DAY = 86400


def figure(text: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}\s+([\d,]+)$", text, re.MULTILINE)
    assert match, f"{label!r} not in {text!r}"
    return int(match.group(1).replace(",", ""))


async def test_promotion_sends_the_setup_summary_and_snippet(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    # The fake's promoter (user 1) gets the onboarding message.
    await eventually(lambda: bool(sent_to(telegram, 1)), what="onboarding message")
    (text,) = sent_to(telegram, 1)
    assert "is now tracked" in text
    assert "Lead" in text
    assert "data-tracker=" in text
    assert "/api/v1/events" in text
    assert "update-fbp" in text
    assert "is public" not in text


async def test_promotion_without_invite_right_says_which_right(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.add_channel(OTHER_CHANNEL, "No Rights", bot_rights={"can_invite_users": False})
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, admin_ids=str(OWNER)))
    await running.start()
    try:
        telegram.bot_status_change(
            OTHER_CHANNEL, "administrator", rights={"can_invite_users": False}
        )
        await eventually(lambda: bool(sent_to(telegram, OWNER)), what="alert to owner")
        text = sent_to(telegram, OWNER)[0]
        assert "Invite users via link" in text
        assert (
            await running.scalar(
                "SELECT can_invite_users FROM channels WHERE chat_id = ?", (OTHER_CHANNEL,)
            )
            == 0
        )
    finally:
        assert await running.stop() == 0


async def test_public_channel_gets_the_warning(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.add_channel(OTHER_CHANNEL, "Public One", username="publicone")
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget))
    await running.start()
    try:
        telegram.bot_status_change(OTHER_CHANNEL, "administrator", by_user_id=777)
        await eventually(lambda: bool(sent_to(telegram, 777)), what="onboarding message")
        text = sent_to(telegram, 777)[0]
        assert "is public (@publicone)" in text
        assert "/mode @publicone request" in text
    finally:
        assert await running.stop() == 0


async def test_demotion_marks_inactive_tells_admins_and_stops_links(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    telegram.bot_status_change(CHANNEL_ID, "left")
    await admin_bridge.wait_scalar("SELECT active FROM channels", 0)
    await eventually(lambda: bool(sent_to(telegram, OWNER)), what="demotion alert")
    assert "no longer an admin" in sent_to(telegram, OWNER)[0]
    with pytest.raises(LookupError):
        await admin_bridge.mint("00000000-0000-4000-8000-000000000001")


async def test_stats_counts_each_period_and_buttons_edit_the_message(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    now = int(time.time())
    url = await admin_bridge.mint("00000000-0000-4000-8000-000000000002", utm_source="meta")
    telegram.join(CHANNEL_ID, 501, url, date=now - 60)
    telegram.join(CHANNEL_ID, 502, date=now - 3 * DAY)
    telegram.join(CHANNEL_ID, 503, date=now - 20 * DAY)
    last = telegram.join(CHANNEL_ID, 504, date=now - 100 * DAY)
    assert last is not None
    await telegram.wait_confirmed(last)
    await adtarget.wait_for_conversions(1)
    await admin_bridge.wait_scalar(
        "SELECT state FROM outbox WHERE kind = 'conversion'", "delivered"
    )
    expected = {"today": 1, "7d": 2, "30d": 3, "all": 4}
    for period, joins in expected.items():
        text = await ask(telegram, OWNER, f"/stats Test {period}")
        assert figure(text, "Joins") == joins, period
        assert figure(text, "  attributed") == 1
        assert figure(text, "  organic") == joins - 1
        assert figure(text, "  delivered") == 1
        assert re.search(r"^meta\s+1\s+100%", text, re.MULTILINE), text
    # The inline buttons switch the period by editing the same message.
    message = next(m for m in reversed(telegram.sent_messages) if m["chat"]["id"] == OWNER)
    assert "reply_markup" in message
    telegram.enqueue(
        "callback_query",
        {
            "id": "cb1",
            "from": {"id": OWNER, "is_bot": False, "first_name": "Owner"},
            "chat_instance": "ci",
            "message": message,
            "data": f"st:{CHANNEL_ID}:7d",
        },
    )
    edit = await telegram.wait_for_call("editMessageText")
    assert edit.params["message_id"] == message["message_id"]
    assert figure(str(edit.raw["text"]), "Joins") == 2
    await telegram.wait_for_call("answerCallbackQuery")


async def test_stats_and_lead_say_what_adtarget_passed_on_to_an_ad_platform(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.add_channel(OTHER_CHANNEL, "Second Channel")
    await admin_bridge.track_channel(telegram, OTHER_CHANNEL)
    # One visitor came from an ad click (fbc), one did not: AdTarget passes the first
    # conversion on to the pixel and skips the second, with its warning.
    clicked = await admin_bridge.mint("00000000-0000-4000-8000-0000000000c1", fbc="fb.1.1.ad")
    plain = await admin_bridge.mint("00000000-0000-4000-8000-0000000000c2", utm_source="mail")
    telegram.join(CHANNEL_ID, 801, clicked)
    telegram.join(CHANNEL_ID, 802, plain)
    answers = {c["telegramUserId"]: c for c in await adtarget.wait_for_conversions(2)}
    await admin_bridge.wait_scalar(
        "SELECT count(*) FROM outbox WHERE kind = 'conversion' AND state = 'delivered'", 2
    )

    # The bridge's admin sees every channel, each named.
    text = await ask(telegram, OWNER, "/stats")
    assert text.startswith(
        "<b>All 2 channels</b> · last 7 days\nSecond Channel and Test Channel\n<pre>"
    ), text
    assert figure(text, "  delivered") == 2
    assert figure(text, "    to ad platform") == 1
    assert figure(text, "    skipped") == 1
    assert figure(text, "Still subscribed") == 2
    assert f"\nMost frequent warning from AdTarget, on 1 conversion: {NO_SIGNAL}\n" in text
    one = await ask(telegram, OWNER, "/stats Test")
    assert one.startswith("<b>Test Channel</b> · last 7 days\n<pre>"), one
    assert figure(one, "    skipped") == 1

    # /lead says the same for each conversion, in the same words.
    skipped = await ask(telegram, OWNER, "/lead 802")
    assert f"Lead on Test Channel ({CHANNEL_ID}) — capi skipped (not passed on" in skipped
    assert f"\n  not passed on to an ad platform: {NO_SIGNAL}" in skipped
    assert answers[802]["conversionId"] in skipped
    passed = await ask(telegram, OWNER, "/lead 801")
    assert "capi pending (passed on to the ad platform)" in passed
    assert "\n  passed on to the ad platform\n" in passed + "\n"
    assert "not passed on" not in passed


async def test_strangers_are_refused(admin_bridge: RunningBridge, telegram: FakeTelegram) -> None:
    for command in ("/stats", "/channels", "/links", "/outbox", "/event Test Lead"):
        text = await ask(telegram, 999, command)
        assert text.startswith("Sorry"), command
        assert "Test Channel" not in text


async def test_a_channel_admin_sees_only_their_channel(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    telegram.add_channel(OTHER_CHANNEL, "Second Channel")
    await admin_bridge.track_channel(telegram, OTHER_CHANNEL)
    telegram.join(CHANNEL_ID, 777, new_status="administrator")
    channels_text = await ask(telegram, 777, "/channels")
    assert "Test Channel" in channels_text
    assert "Second Channel" not in channels_text
    stats_text = await ask(telegram, 777, "/stats")
    assert "Test Channel" in stats_text
    refused = await ask(telegram, 777, "/stats Second")
    assert "No channel" in refused
    assert "Only the bridge's admins" in await ask(telegram, 777, "/outbox")
    owner_view = await ask(telegram, OWNER, "/channels")
    assert "Second Channel" in owner_view


async def test_event_and_mode_change_what_later_joins_send(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    assert "Subscribe" in await ask(telegram, OWNER, "/event Test Subscribe")
    url = await admin_bridge.mint("00000000-0000-4000-8000-000000000003", fbc="fb.1.1.e")
    telegram.join(CHANNEL_ID, 601, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["eventType"] == "Subscribe"
    bad = await ask(telegram, OWNER, "/event Test Visit")
    assert "Usage: /event" in bad
    assert "join-request links" in (await ask(telegram, OWNER, f"/mode {CHANNEL_ID} request"))
    link = await admin_bridge.mint("00000000-0000-4000-8000-000000000004")
    assert telegram.links[link]["creates_join_request"] is True


async def test_campaign_link_join_is_reported_with_the_campaign(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    text = await ask(telegram, OWNER, "/link Test spring-post")
    (url,) = re.findall(r"https://t\.me/\+\S+", text)
    telegram.join(CHANNEL_ID, 701, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["contentName"] == "spring-post"
    assert "fbc" not in conversion
    await admin_bridge.wait_scalar("SELECT kind FROM joins", "campaign")
    listing = await ask(telegram, OWNER, "/links")
    assert "spring-post" in listing
    assert "joins: 1" in listing


async def test_retry_delivers_a_parked_row(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.fail(
        400, "INVALID_PAYLOAD", "fbc: malformed", count=1, paths=("/api/v1/events/conversion",)
    )
    url = await admin_bridge.mint("00000000-0000-4000-8000-000000000005", fbc="fb.1.1.r")
    telegram.join(CHANNEL_ID, 801, url)
    await admin_bridge.wait_scalar("SELECT state FROM outbox", "parked")
    # The owner is also alerted about the parked row; wait for that alert first, so
    # that `ask` below reads /outbox's answer and not the alert (which names the
    # reason too, and would let the assertion pass on the wrong message).
    await eventually(
        lambda: any("was parked" in text for text in sent_to(telegram, OWNER)),
        what="the parked-row alert",
    )
    outbox_text = await ask(telegram, OWNER, "/outbox")
    assert "was parked" not in outbox_text
    assert "fbc: malformed" in outbox_text
    assert "1 parked row(s) queued again" in await ask(telegram, OWNER, "/retry all")
    await adtarget.wait_for_conversions(1)
    await admin_bridge.wait_scalar("SELECT state FROM outbox", "delivered")


async def test_a_paused_courier_alerts_once_not_per_row(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.revoke_key()
    for i in range(5):
        url = await admin_bridge.mint(f"00000000-0000-4000-8000-00000000090{i}", fbc=f"fb.1.1.{i}")
        telegram.join(CHANNEL_ID, 900 + i, url)
    await eventually(lambda: bool(sent_to(telegram, OWNER)), what="pause alert")
    await asyncio.sleep(1.0)  # several probes fail meanwhile
    alerts = [t for t in sent_to(telegram, OWNER) if "paused" in t]
    assert len(alerts) == 1
    assert "401" in alerts[0]


async def test_pause_and_resume(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    assert "paused" in await ask(telegram, OWNER, "/pause")
    url = await admin_bridge.mint("00000000-0000-4000-8000-000000000006", fbc="fb.1.1.p")
    telegram.join(CHANNEL_ID, 1001, url)
    await admin_bridge.wait_scalar("SELECT count(*) FROM outbox", 1)
    await asyncio.sleep(0.5)
    assert adtarget.conversions == []
    assert "resumed" in await ask(telegram, OWNER, "/resume")
    await adtarget.wait_for_conversions(1)


async def test_an_unknown_command_or_plain_text_gets_an_answer(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    assert "I don't know /statz" in await ask(telegram, OWNER, "/statz today")
    assert "commands only" in await ask(telegram, OWNER, "how many joined today?")
    # A stranger gets the usual refusal, nothing about the bridge.
    assert "only answers the admins" in await ask(telegram, 987654, "hello")


async def test_start_tells_anyone_their_own_user_id(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    # A new owner fills ADMIN_IDS from this answer: it must hold their numeric id.
    stranger = await ask(telegram, 987654, "/start")
    assert "Your Telegram user id is <code>987654</code>." in stranger
    assert "ADMIN_IDS" in stranger
    assert "/stats" not in stranger  # the commands are for admins
    owner = await ask(telegram, OWNER, "/start")
    assert f"Your Telegram user id is <code>{OWNER}</code>." in owner
    assert "/stats" in owner
