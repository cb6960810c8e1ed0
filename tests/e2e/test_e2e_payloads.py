"""Every captured Telegram update in tests/payloads/ through the running bridge.

Each capture is queued verbatim by the simulator (only its chat retargeted to a test
channel) to a bridge that polls it over loopback HTTP and records it in SQLite; the
outcome is checked in the database and at the fake AdTarget. Joins meant to be
attributed are sent again with a link the bot minted and must become exactly one
conversion. A capture damaged past reading is kept as unreadable and does not hold
back the join behind it.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import channels
from tests.harness import CHANNEL_ID, PAYLOADS, RunningBridge, load_payload

# A second channel for the captures of the bot's own promotion (my_chat_member).
OTHER = CHANNEL_ID - 7
BY_STEM = {path.stem: path for path in PAYLOADS}

# What the bridge must make of each capture sent verbatim.
ORGANIC = "organic join, no conversion"
IGNORED = "ignored: nothing recorded"
ADMIN_WITHOUT_INVITE = "tracked, without the invite right"
ADMIN_WITH_INVITE = "tracked with the invite right, onboarded"
EXPECTED = {
    "01_supergroup_join_left_to_member": ORGANIC,
    "02_supergroup_member_to_restricted": IGNORED,  # member -> member: no transition
    "05_channel_bot_promoted_without_invite_right": ADMIN_WITHOUT_INVITE,
    "07_channel_bot_promoted_bavovna": ADMIN_WITHOUT_INVITE,
    "14_channel_join_via_masked_other_admin_request_link": ORGANIC,  # not our link
    "16_join_request_with_bio_and_query_id": IGNORED,  # a private chat's request
    "17_join_via_named_limited_link_member_until_date": ORGANIC,
    "20_join_via_subscription_link_premium_user": ORGANIC,
    "23_channel_bot_promoted_can_invite": ADMIN_WITH_INVITE,
    "26_public_channel_organic_join": ORGANIC,
}
# The chat_member joins sent again through a minted link (01 and 26 carry no
# invite_link: one is put in, shaped as 17's).
ATTRIBUTED = [
    "01_supergroup_join_left_to_member",
    "14_channel_join_via_masked_other_admin_request_link",
    "17_join_via_named_limited_link_member_until_date",
    "20_join_via_subscription_link_premium_user",
    "26_public_channel_organic_join",
]


def capture(prefix: str) -> dict[str, Any]:
    (path,) = [path for stem, path in BY_STEM.items() if stem.startswith(prefix)]
    return load_payload(path)


def event_of(update: dict[str, Any]) -> dict[str, Any]:
    (kind,) = [key for key in update if key != "update_id"]
    event: dict[str, Any] = update[kind]
    return event


def put_link(event: dict[str, Any], url: str) -> None:
    """`url` as the join's invite link, in the capture's own link object or in 17's."""
    link = event.get("invite_link") or capture("17")["chat_member"]["invite_link"]
    event["invite_link"] = {**copy.deepcopy(link), "invite_link": url}


def send(telegram: FakeTelegram, update: dict[str, Any]) -> int:
    update_id = telegram.enqueue_raw(update)
    assert update_id is not None, "allowed_updates dropped the capture"
    return update_id


async def handled(bridge: RunningBridge, telegram: FakeTelegram, update_id: int) -> None:
    """Confirmed to Telegram, and stored as handled (not failed, not unreadable)."""
    await telegram.wait_confirmed(update_id)
    sql = "SELECT state FROM updates WHERE update_id = ?"
    await bridge.wait_scalar(sql, "done", (update_id,))


async def nothing_sent(bridge: RunningBridge, adtarget: FakeAdTarget) -> None:
    await asyncio.sleep(0.2)
    assert adtarget.conversions == []
    assert await bridge.scalar("SELECT count(*) FROM outbox") == 0


def test_every_payload_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == set(BY_STEM)


@pytest.mark.parametrize("stem", sorted(BY_STEM))
async def test_verbatim_capture(
    stem: str, bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    outcome = EXPECTED[stem]
    update = load_payload(BY_STEM[stem])
    event = event_of(update)
    if outcome in (ADMIN_WITHOUT_INVITE, ADMIN_WITH_INVITE):
        # The bot promoted in a second channel; the fake world agrees on its rights.
        can_invite = outcome == ADMIN_WITH_INVITE
        telegram.add_channel(OTHER, "Other", bot_rights={"can_invite_users": can_invite})
        event["chat"]["id"] = OTHER
        for member in (event["old_chat_member"], event["new_chat_member"]):
            member["user"]["id"] = telegram.bot_user["id"]
    else:
        event["chat"]["id"] = CHANNEL_ID
    update_id = send(telegram, update)
    await handled(bridge, telegram, update_id)

    if outcome == ORGANIC:
        row = await bridge.bridge.db.fetchone("SELECT user_id, kind, link_id, link_url FROM joins")
        assert row is not None
        link_url = event.get("invite_link", {}).get("invite_link")
        assert tuple(row) == (event["new_chat_member"]["user"]["id"], "organic", None, link_url)
        assert await bridge.scalar("SELECT count(*) FROM joins") == 1
    elif outcome == IGNORED:
        for sql in (
            "SELECT count(*) FROM joins",
            "SELECT count(*) FROM leaves",
            "SELECT count(*) FROM join_requests",
        ):
            assert await bridge.scalar(sql) == 0, sql
        assert telegram.calls_to("approveChatJoinRequest") == []
    else:
        row = await bridge.bridge.db.fetchone(
            "SELECT active, can_invite_users, onboarded_at FROM channels WHERE chat_id = ?",
            (OTHER,),
        )
        assert row is not None
        assert (row[0], row[1]) == (1, int(can_invite))
        assert (row[2] is not None) == can_invite
    await nothing_sent(bridge, adtarget)


@pytest.mark.parametrize("stem", ATTRIBUTED)
async def test_capture_through_a_minted_link_is_one_conversion(
    stem: str, bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    update = load_payload(BY_STEM[stem])
    event = event_of(update)
    event["chat"]["id"] = CHANNEL_ID
    url = await bridge.mint(f"6f1c2d3e-0000-4000-8000-{stem[:2]:0>12}", fbc="fb.1.1.payload")
    put_link(event, url)
    user_id = event["new_chat_member"]["user"]["id"]
    update_id = send(telegram, update)

    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == user_id
    assert conversion["channelId"] == str(CHANNEL_ID)
    assert conversion["eventTime"] == event["date"] * 1000
    assert conversion["fbc"] == "fb.1.1.payload"
    await handled(bridge, telegram, update_id)
    row = await bridge.bridge.db.fetchone("SELECT user_id, kind, link_url FROM joins")
    assert row is not None
    assert tuple(row) == (user_id, "attributed", url)
    await asyncio.sleep(0.2)
    assert len(adtarget.conversions) == 1
    assert await bridge.scalar("SELECT count(*) FROM joins") == 1


async def test_join_request_through_a_minted_link_is_approved_and_converts(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # Join-request mode, so the minted link is one a request can come through
    # (the bridge itself matches a request's link by URL in either mode).
    await channels.set_mode(bridge.bridge.db, CHANNEL_ID, "request")
    url = await bridge.mint("6f1c2d3e-0000-4000-8000-000000000016", fbc="fb.1.1.request")
    assert telegram.links[url]["creates_join_request"] is True
    update = capture("16")
    event = event_of(update)
    event["chat"].update(id=CHANNEL_ID, type="channel")
    event["invite_link"]["invite_link"] = url
    user_id = event["from"]["id"]
    update_id = send(telegram, update)

    call = await telegram.wait_for_call("approveChatJoinRequest")
    assert (call.params["chat_id"], call.params["user_id"]) == (CHANNEL_ID, user_id)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == user_id
    assert conversion["channelId"] == str(CHANNEL_ID)
    assert conversion["fbc"] == "fb.1.1.request"
    await handled(bridge, telegram, update_id)
    row = await bridge.bridge.db.fetchone(
        "SELECT r.state, r.user_id, r.link_url, r.update_id, l.url"
        " FROM join_requests r JOIN invite_links l ON l.id = r.link_id"
    )
    assert row is not None
    assert tuple(row) == ("approved", user_id, url, update_id, url)
    # Telegram's chat_member update after the approval is the same join.
    await bridge.wait_scalar("SELECT count(*) FROM updates WHERE kind = 'chat_member'", 1)
    await asyncio.sleep(0.2)
    assert len(adtarget.conversions) == 1
    joins = await bridge.bridge.db.fetchall("SELECT kind, via_join_request FROM joins")
    assert [tuple(j) for j in joins] == [("attributed", 1)]


async def test_unreadable_capture_is_kept_and_the_join_after_it_converts(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    damaged = capture("26")
    event_of(damaged)["chat"]["id"] = CHANNEL_ID
    event_of(damaged)["new_chat_member"] = 5  # neither aiogram nor the tolerant reader
    valid = capture("26")
    event = event_of(valid)
    event["chat"]["id"] = CHANNEL_ID
    put_link(event, await bridge.mint("6f1c2d3e-0000-4000-8000-000000000260"))
    # Queued together: one getUpdates answer holds both.
    bad_id = send(telegram, damaged)
    good_id = send(telegram, valid)

    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == event["new_chat_member"]["user"]["id"]
    assert conversion["channelId"] == str(CHANNEL_ID)
    await handled(bridge, telegram, good_id)
    row = await bridge.bridge.db.fetchone(
        "SELECT state, kind, last_error FROM updates WHERE update_id = ?", (bad_id,)
    )
    assert row is not None
    state, kind, error = row
    assert (state, kind) == ("unreadable", "chat_member")
    assert error.startswith("chat_member.new_chat_member: ")
    assert await bridge.scalar("SELECT kind FROM joins") == "attributed"
    assert await bridge.scalar("SELECT count(*) FROM joins") == 1
