"""What real Telegram servers send, end to end: the real bridge polls the simulator,
which sends the shapes that older, newer and self-hosted Bot API servers send.

One test (or a few) per problem that real payloads showed: an unreadable update
holding back polling (1), a username moving to another channel (2), chats the bot
was never set up in (3), a rejoin through a campaign link (4), an approval's echo
without link or flag (5), a bot added as admin (6), rights edits re-sending the
onboarding (7).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import httpx
import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from bot.simulators.telegram_models import OLD_SERVER_OMITS, chat_json, user_json
from storage import channels
from tests.harness import (
    CHANNEL_ID,
    CHANNEL_TITLE,
    OWNER,
    RunningBridge,
    StartBridge,
    ask,
    eventually,
    sent_to,
)
from tests.unit.ops.test_metrics import scrape, value

OTHER = CHANNEL_ID - 1
STRANGER = CHANNEL_ID - 2
PROMOTER = 1  # the simulator's admin who promotes the bot


def temp_id(n: int) -> str:
    return f"16161616-0000-4000-8000-{n:012d}"


def poisoned_join(user_id: int) -> dict[str, Any]:
    """A chat_member that neither aiogram nor the tolerant reader can read."""
    user = user_json(user_id)
    return {
        "chat": chat_json(CHANNEL_ID, "channel", title=CHANNEL_TITLE),
        "from": user,
        "date": 1764100000,
        "old_chat_member": {"status": "left", "user": user},
        "new_chat_member": "member",  # an object in every Bot API version
    }


async def health(running: RunningBridge) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=running.bridge.tracker_url, timeout=10) as http:
        response = await http.get("/healthz")
    report: dict[str, Any] = response.json()
    return report


# ---- 1. an update nobody can read holds back nothing ---------------------------------


async def test_a_poisoned_update_stops_no_join_in_its_batch_or_the_next(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_bridge(admin_ids=str(OWNER))
    before, first, after = [await running.mint(temp_id(n)) for n in (1, 2, 3)]
    # Queued without yielding to the event loop: one getUpdates answer holds all three.
    telegram.join(CHANNEL_ID, 16001, before)
    bad = telegram.enqueue("chat_member", poisoned_join(16002))
    last = telegram.join(CHANNEL_ID, 16003, first)
    assert bad is not None
    assert last is not None
    await adtarget.wait_for_conversions(2)
    # The next batch, and a second unreadable update there.
    second_bad = telegram.enqueue("chat_member", poisoned_join(16004))
    telegram.join(CHANNEL_ID, 16005, after)
    conversions = await adtarget.wait_for_conversions(3)
    assert sorted(c["telegramUserId"] for c in conversions) == [16001, 16003, 16005]
    assert second_bad is not None
    await telegram.wait_confirmed(second_bad)  # the offset moved past both

    # Kept, with the field path and the reason, and never retried.
    row = await running.bridge.db.fetchone(
        "SELECT state, kind, last_error, raw FROM updates WHERE update_id = ?", (bad,)
    )
    assert row is not None
    assert (row[0], row[1]) == ("unreadable", "chat_member")
    assert "chat_member.new_chat_member" in row[2]
    assert '"new_chat_member": "member"' in row[3] or '"new_chat_member":"member"' in row[3]
    # Shown in /healthz, /metrics and /outbox.
    report = await health(running)
    assert report["telegram"]["updatesUnreadable"] == 2
    assert report["telegram"]["lastUnreadable"]["updateId"] == second_bad
    assert "chat_member.new_chat_member" in report["telegram"]["lastUnreadable"]["error"]
    samples = await scrape(running.bridge)
    assert value(samples, "joinbridge_updates_unreadable_total", kind="chat_member") == 2
    outbox = await ask(telegram, OWNER, "/outbox")
    assert "could not read: 2" in outbox
    assert str(second_bad) in outbox
    # One alert for both, to ADMIN_IDS.
    alerts = [t for t in sent_to(telegram, OWNER) if "cannot read" in t]
    assert len(alerts) == 1
    assert "chat_member.new_chat_member" in alerts[0]
    # Telegram was reachable all along.
    assert "unreachable" not in caplog.text


async def test_an_old_servers_updates_track_the_channel_and_attribute_its_joins(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start_bridge()
    caplog.set_level(logging.INFO, logger="bot.polling.reader")
    # A self-hosted Bot API server older than aiogram: no can_send_welcome_messages,
    # no can_react_to_messages, no 6.5 media rights, ...
    telegram.omit_fields = OLD_SERVER_OMITS
    telegram.extra_fields = {"some_field_from_the_future": {"x": 1}}
    telegram.add_channel(OTHER, "Old server channel")
    telegram.bot_status_change(OTHER, "administrator")
    await running.wait_scalar(
        "SELECT active * can_invite_users FROM channels WHERE chat_id = ?", 1, (OTHER,)
    )
    url = await running.mint(temp_id(4), chat_id=OTHER)
    # A restricted member: aiogram requires rights this server does not send.
    telegram.join(OTHER, 16010, url, new_status="restricted")
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert (conversion["telegramUserId"], conversion["channelId"]) == (16010, str(OTHER))
    assert "read by the tolerant reader" in caplog.text
    assert await running.scalar("SELECT count(*) FROM updates WHERE state = 'unreadable'") == 0


async def test_an_unknown_status_is_not_a_member(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    telegram.allow_unknown_status = True
    url = await bridge.mint(temp_id(5))
    telegram.join(CHANNEL_ID, 16020, url)
    await adtarget.wait_for_conversions(1)
    # A newer server's status for a member who is gone: a leave.
    telegram.leave(CHANNEL_ID, 16020, new_status="departed")
    await bridge.wait_scalar("SELECT left_at IS NOT NULL FROM joins WHERE user_id = 16020", 1)
    # And a "join" into a status nobody knows: not a member, so not a join.
    last = telegram.join(CHANNEL_ID, 16021, None, new_status="departed")
    assert last is not None
    await telegram.wait_confirmed(last)
    assert await bridge.scalar("SELECT count(*) FROM joins WHERE user_id = 16021") == 0
    assert caplog.text.count("unknown chat member status 'departed'") == 1
    assert len(adtarget.conversions) == 1


# ---- 2. a username follows its channel -----------------------------------------------


async def test_a_username_moved_to_another_channel_moves_with_it(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.add_channel(OTHER, "Old name holder", username="springsale")
    await bridge.track_channel(telegram, OTHER)
    assert await bridge.scalar("SELECT username FROM channels WHERE chat_id = ?", (OTHER,)) == (
        "springsale"
    )
    # The owner frees @springsale in one channel and gives it to the test channel.
    telegram.add_channel(OTHER, "Old name holder")
    telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE, username="springsale")
    url = await bridge.mint(temp_id(6))
    telegram.join(CHANNEL_ID, 16030, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 16030
    usernames = await bridge.bridge.db.fetchall(
        "SELECT chat_id, username FROM channels ORDER BY chat_id"
    )
    assert [tuple(r) for r in usernames] == [(OTHER, None), (CHANNEL_ID, "springsale")]
    # The old holder's next update shows it without: nothing to move, nothing fails.
    last = telegram.join(OTHER, 16031, None)
    assert last is not None
    await telegram.wait_confirmed(last)
    assert await bridge.scalar("SELECT count(*) FROM updates WHERE state != 'done'") == 0


# ---- 3. only chats the bot was set up in are tracked ---------------------------------


async def test_updates_from_a_chat_the_bot_was_never_set_up_in_are_ignored_and_counted(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = await start_bridge(admin_ids=str(OWNER), send_organic="true")
    # The bot is admin of a discussion group, but its promotion never reached the bridge.
    telegram.add_channel(STRANGER, "Discussion", chat_type="supergroup")
    telegram.join(STRANGER, 16040, None)
    telegram.join_request(STRANGER, 16041, None)
    # A plain member of another group: not tracked either.
    telegram.add_channel(OTHER, "Some group", chat_type="supergroup")
    last = telegram.bot_status_change(OTHER, "member")
    assert last is not None
    await telegram.wait_confirmed(last)
    assert (
        await running.scalar("SELECT count(*) FROM channels WHERE chat_id != ?", (CHANNEL_ID,)) == 0
    )
    assert await running.scalar("SELECT count(*) FROM joins") == 0
    assert await running.scalar("SELECT count(*) FROM join_requests") == 0
    assert [
        c for c in telegram.calls_to("createChatInviteLink") if c.params["chat_id"] != CHANNEL_ID
    ] == []
    assert telegram.calls_to("approveChatJoinRequest") == []
    samples = await scrape(running.bridge)
    assert value(samples, "joinbridge_updates_untracked_total", kind="chat_member") == 1
    assert value(samples, "joinbridge_updates_untracked_total", kind="chat_join_request") == 1
    await asyncio.sleep(0.2)
    assert adtarget.conversions == []

    # An owner adds it explicitly: tracked from then on, with the setup message.
    answer = await ask(telegram, OWNER, f"/track {STRANGER}")
    assert "is tracked from now on" in answer
    await eventually(
        lambda: any("Discussion</b> is now tracked" in t for t in sent_to(telegram, OWNER)),
        what="setup message",
    )
    assert "already tracked" in await ask(telegram, OWNER, f"/track {STRANGER}")
    telegram.join(STRANGER, 16042, None)
    await running.wait_scalar("SELECT count(*) FROM joins WHERE chat_id = ?", 1, (STRANGER,))
    (conversion,) = await adtarget.wait_for_conversions(1)  # SEND_ORGANIC is on
    assert conversion["channelId"] == str(STRANGER)


async def test_track_refuses_what_it_cannot_vouch_for(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    assert "Usage: /track" in await ask(telegram, OWNER, "/track Discussion")
    assert "does not show" in await ask(telegram, OWNER, "/track -100111")
    telegram.add_channel(STRANGER, "Not admin here")
    telegram.bot_status_change(STRANGER, "member")
    assert "not an admin" in await ask(telegram, OWNER, f"/track {STRANGER}")
    # Someone who is neither in ADMIN_IDS nor an admin of that chat.
    telegram.add_channel(OTHER, "Other")
    assert "Only ADMIN_IDS" in await ask(telegram, 16050, f"/track {OTHER}")
    assert (
        await admin_bridge.scalar(
            "SELECT count(*) FROM channels WHERE chat_id IN (?, ?)", (STRANGER, OTHER)
        )
        == 0
    )


# ---- 4. a rejoin through a campaign link ---------------------------------------------


async def test_a_rejoin_through_a_campaign_link_is_present_again_and_sent_once(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    text = await ask(telegram, OWNER, "/link Test autumn-post")
    (url,) = re.findall(r"https://t\.me/\+\S+", text)
    telegram.join(CHANNEL_ID, 16060, url, date=1764100000)
    await adtarget.wait_for_conversions(1)
    telegram.leave(CHANNEL_ID, 16060, date=1764100100)
    await admin_bridge.wait_scalar("SELECT left_at FROM joins", 1764100100)
    assert "joins: 1, still there: 0" in await ask(telegram, OWNER, "/links")
    last = telegram.join(CHANNEL_ID, 16060, url, date=1764100200)
    assert last is not None
    await admin_bridge.wait_scalar("SELECT left_at IS NULL FROM joins", 1)
    assert "joins: 1, still there: 1" in await ask(telegram, OWNER, "/links")
    # A redelivery of the first join, or of the leave, changes nothing.
    await asyncio.sleep(0.2)
    assert len(adtarget.conversions) == 1
    assert await admin_bridge.scalar("SELECT count(*) FROM outbox") == 1


# ---- 5. the approval's echo without link or flag -------------------------------------


@pytest.mark.parametrize("send_organic", ["false", "true"])
async def test_an_approval_echo_without_link_or_flag_is_the_same_join(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    send_organic: str,
) -> None:
    telegram.emit_member_update_on_approve = False
    running = await start_bridge(send_organic=send_organic)
    await channels.set_mode(running.bridge.db, CHANNEL_ID, "request")
    url = await running.mint(temp_id(7))
    telegram.join_request(CHANNEL_ID, 16070, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 16070
    await running.wait_scalar("SELECT state FROM join_requests", "approved")
    # Telegram's report of that join arrives with neither the link nor via_join_request
    # (tdlib/telegram-bot-api#650), a moment later.
    last = telegram.join(CHANNEL_ID, 16070, None)
    assert last is not None
    await telegram.wait_confirmed(last)
    await running.wait_scalar("SELECT state FROM updates WHERE update_id = ?", "done", (last,))
    await asyncio.sleep(0.2)
    assert len(adtarget.conversions) == 1
    assert await running.scalar("SELECT count(*) FROM joins") == 1
    assert await running.scalar("SELECT kind FROM joins") == "attributed"
    # A real organic join of someone else still counts.
    other = telegram.join(CHANNEL_ID, 16071, None)
    assert other is not None
    await running.wait_scalar("SELECT count(*) FROM joins WHERE kind = 'organic'", 1)


async def test_a_bare_echo_sent_while_the_approval_is_in_flight_is_the_same_join(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # Telegram reports the join during the approveChatJoinRequest call, before the
    # bridge has recorded the approval, and without link or flag.
    telegram.bare_approval_echo = True
    running = await start_bridge(send_organic="true")
    await channels.set_mode(running.bridge.db, CHANNEL_ID, "request")
    url = await running.mint(temp_id(8))
    telegram.join_request(CHANNEL_ID, 16075, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 16075
    await running.wait_scalar("SELECT state FROM join_requests", "approved")
    await running.wait_scalar("SELECT count(*) FROM updates WHERE kind = 'chat_member'", 1)
    await running.wait_scalar("SELECT count(*) FROM updates WHERE state != 'done'", 0)
    await asyncio.sleep(0.2)
    assert len(adtarget.conversions) == 1
    rows = await running.bridge.db.fetchall("SELECT kind, via_join_request, link_url FROM joins")
    assert [tuple(r) for r in rows] == [("attributed", 1, url)]


# ---- 6. bots are never joins ---------------------------------------------------------


async def test_a_bot_added_to_the_channel_is_not_a_join(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = await start_bridge(send_organic="true")
    telegram.enqueue(
        "chat_member",
        {
            "chat": chat_json(CHANNEL_ID, "channel", title=CHANNEL_TITLE),
            "from": user_json(PROMOTER, "Admin"),
            "date": 1764100000,
            "old_chat_member": {"status": "left", "user": user_json(16080, is_bot=True)},
            "new_chat_member": {
                "status": "administrator",
                "user": user_json(16080, "Other bot", is_bot=True),
                "can_be_edited": True,
                "is_anonymous": False,
                "can_manage_chat": True,
                "can_delete_messages": False,
                "can_manage_video_chats": False,
                "can_restrict_members": False,
                "can_promote_members": False,
                "can_change_info": False,
                "can_invite_users": True,
                "can_post_stories": False,
                "can_edit_stories": False,
                "can_delete_stories": False,
            },
        },
    )
    last = telegram.join(CHANNEL_ID, 16081, None)  # a person, after it
    assert last is not None
    await running.wait_scalar("SELECT count(*) FROM joins", 1)
    assert await running.scalar("SELECT user_id FROM joins") == 16081
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 16081


# ---- 7. onboarding once; the invite right gets its own notes -------------------------


async def test_onboarding_is_sent_once_and_rights_edits_get_short_notes(
    bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    notifier = bridge.bridge.notifier

    async def after(change: int | None) -> list[str]:
        """What the promoter got once the change was handled and its messages sent."""
        assert change is not None
        await bridge.wait_scalar("SELECT state FROM updates WHERE update_id = ?", "done", (change,))
        await eventually(lambda: notifier.settled == notifier.queued, what="messages sent")
        return sent_to(telegram, PROMOTER)

    await eventually(lambda: bool(sent_to(telegram, PROMOTER)), what="onboarding")

    (onboarding,) = sent_to(telegram, PROMOTER)
    assert "is now tracked" in onboarding
    assert "<pre>" in onboarding  # the snippet
    # Another rights edit: nothing.
    same = telegram.bot_status_change(
        CHANNEL_ID, "administrator", rights={"can_pin_messages": True}
    )
    assert await after(same) == [onboarding]
    # The invite right taken away: one short note, once.
    lost = telegram.bot_status_change(
        CHANNEL_ID, "administrator", rights={"can_invite_users": False}
    )
    texts = await after(lost)
    assert len(texts) == 2
    assert "cannot make invite links" in texts[1]
    again = telegram.bot_status_change(
        CHANNEL_ID, "administrator", rights={"can_invite_users": False, "can_pin_messages": True}
    )
    assert await after(again) == texts
    # Given back: a short note, not the onboarding.
    back = telegram.bot_status_change(CHANNEL_ID, "administrator")
    texts = await after(back)
    assert len(texts) == 3
    assert "can make invite links again" in texts[2]
    assert "<pre>" not in texts[2]
    # Removed and promoted again: "tracked again", still no second onboarding.
    telegram.bot_status_change(CHANNEL_ID, "left")
    await bridge.wait_scalar("SELECT active FROM channels WHERE chat_id = ?", 0, (CHANNEL_ID,))
    readded = telegram.bot_status_change(CHANNEL_ID, "administrator")
    texts = await after(readded)
    assert "is tracked again" in texts[-1]
    assert sum("is now tracked" in t for t in texts) == 1
