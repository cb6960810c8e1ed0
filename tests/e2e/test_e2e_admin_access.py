"""Who may use the admin commands, through the fake Telegram: a change of a
channel admin's status takes effect with the update that reports it, /sync is
for ADMIN_IDS only, and a button press that cannot be served is answered and
done with, never retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bot.admin.gate import AdminGate
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage.db import open_database
from tests.harness import CHANNEL_ID, OWNER, RunningBridge, ask, eventually

CHANNEL_ADMIN = 777
STRANGER = 999
OUT_OF_DATE = "This button is out of date."
CHANNELS_PATH = "/api/v1/channels"


def member_checks(telegram: FakeTelegram, user_id: int) -> int:
    return len([c for c in telegram.calls_to("getChatMember") if c.params["user_id"] == user_id])


def status_change(telegram: FakeTelegram, user_id: int, old: str, new: str) -> int:
    """`user_id` goes from `old` to `new` status in the test channel: the fake's
    join() sets what getChatMember answers and queues the chat_member update,
    whichever the two statuses are."""
    update_id = telegram.join(CHANNEL_ID, user_id, old_status=old, new_status=new)
    assert update_id is not None
    return update_id


async def handled(running: RunningBridge, update_id: int) -> None:
    await running.wait_scalar("SELECT state FROM updates WHERE update_id = ?", "done", (update_id,))


async def test_a_demoted_admin_is_refused_at_once(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    await handled(admin_bridge, status_change(telegram, CHANNEL_ADMIN, "left", "administrator"))
    assert "Test Channel" in await ask(telegram, CHANNEL_ADMIN, "/stats")
    asked = member_checks(telegram, CHANNEL_ADMIN)
    # Within the gate's cache time (minutes): only the update can end the access.
    await handled(admin_bridge, status_change(telegram, CHANNEL_ADMIN, "administrator", "member"))
    refused = await ask(telegram, CHANNEL_ADMIN, "/stats")
    assert refused.startswith("Sorry"), refused
    assert "Test Channel" not in refused
    assert member_checks(telegram, CHANNEL_ADMIN) == asked + 1  # Telegram was asked again


async def test_an_admin_who_leaves_is_refused_and_the_leave_recorded(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    await handled(admin_bridge, status_change(telegram, CHANNEL_ADMIN, "left", "administrator"))
    assert "Test Channel" in await ask(telegram, CHANNEL_ADMIN, "/channels")
    leave = telegram.leave(CHANNEL_ID, CHANNEL_ADMIN)
    assert leave is not None
    await handled(admin_bridge, leave)
    assert (await ask(telegram, CHANNEL_ADMIN, "/channels")).startswith("Sorry")
    # The same update was a leave too, and the joins router still saw it.
    assert await admin_bridge.scalar(
        "SELECT count(*) FROM leaves WHERE user_id = ? AND update_id = ?", (CHANNEL_ADMIN, leave)
    )
    assert await admin_bridge.scalar(
        "SELECT left_at IS NOT NULL FROM joins WHERE user_id = ?", (CHANNEL_ADMIN,)
    )


async def test_a_promoted_member_is_let_in_at_once(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    await handled(admin_bridge, status_change(telegram, CHANNEL_ADMIN, "left", "member"))
    assert (await ask(telegram, CHANNEL_ADMIN, "/stats")).startswith("Sorry")
    await handled(admin_bridge, status_change(telegram, CHANNEL_ADMIN, "member", "administrator"))
    assert "Test Channel" in await ask(telegram, CHANNEL_ADMIN, "/stats")


async def test_sync_is_for_admin_ids_only(
    admin_bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # The sync at start, done before counting.
    await eventually(lambda: bool(adtarget.received_on(CHANNELS_PATH)), what="sync at start")
    before = len(adtarget.received_on(CHANNELS_PATH))
    await handled(admin_bridge, status_change(telegram, CHANNEL_ADMIN, "left", "administrator"))
    assert "Only the bridge's admins" in await ask(telegram, CHANNEL_ADMIN, "/sync")
    assert (await ask(telegram, STRANGER, "/sync")).startswith("Sorry")
    assert len(adtarget.received_on(CHANNELS_PATH)) == before
    assert "AdTarget channels synced" in await ask(telegram, OWNER, "/sync")
    assert len(adtarget.received_on(CHANNELS_PATH)) == before + 1


def press(telegram: FakeTelegram, query_id: str, message: dict[str, Any], data: str) -> int:
    update_id = telegram.enqueue(
        "callback_query",
        {
            "id": query_id,
            "from": {"id": OWNER, "is_bot": False, "first_name": "Owner"},
            "chat_instance": "ci",
            "message": message,
            "data": data,
        },
    )
    assert update_id is not None
    return update_id


def answers(telegram: FakeTelegram, query_id: str) -> list[dict[str, Any]]:
    calls = telegram.calls_to("answerCallbackQuery")
    return [c.params for c in calls if c.params["callback_query_id"] == query_id]


async def test_buttons_that_cannot_be_served_are_answered_and_done(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    await ask(telegram, OWNER, "/stats Test 7d")
    message = next(m for m in reversed(telegram.sent_messages) if m["chat"]["id"] == OWNER)
    forged = [
        "st:notanint:7d",
        "st:",
        "st:all",
        f"st:{CHANNEL_ID}:7d:extra",
        f"st:{CHANNEL_ID}:forever",
        "st:1_000:7d",  # int() would take it
        "st:١٢:7d",  # Arabic-Indic digits: int() would take these too
        f"st: {CHANNEL_ID}:7d",
        "zz:something else",
        "",
    ]
    pressed: dict[str, int] = {}
    for i, data in enumerate(forged):
        pressed[f"forged{i}"] = press(telegram, f"forged{i}", message, data)
    # The screen already shown: Telegram answers 400 "message is not modified".
    pressed["same"] = press(telegram, "same", message, f"st:{CHANNEL_ID}:7d")
    for update_id in pressed.values():
        await handled(admin_bridge, update_id)
    for query_id in pressed:
        (answer,) = answers(telegram, query_id)
        if query_id == "same":
            assert "text" not in answer
        else:
            assert answer["text"] == OUT_OF_DATE, query_id
    assert await admin_bridge.scalar("SELECT count(*) FROM updates WHERE state != 'done'") == 0
    assert telegram.calls_to("editMessageText")[-1].params["message_id"] == message["message_id"]


async def test_the_admin_cache_is_bounded(tmp_path: Path, telegram: FakeTelegram) -> None:
    """The gate against the fake Telegram: past its bound, the oldest answer goes
    (asking for it again calls getChatMember), the newest ones stay."""
    bot = Bot(telegram.token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))
    db = await open_database(tmp_path / "gate.db")
    try:
        gate = AdminGate(bot, db, (), max_entries=3)
        users = [501, 502, 503, 504]
        for user_id in users:
            assert not await gate.is_channel_admin(user_id, CHANNEL_ID)
        calls = len(telegram.calls_to("getChatMember"))
        for user_id in users[1:]:  # kept: no call
            await gate.is_channel_admin(user_id, CHANNEL_ID)
        assert len(telegram.calls_to("getChatMember")) == calls
        await gate.is_channel_admin(users[0], CHANNEL_ID)  # evicted: asked again
        assert len(telegram.calls_to("getChatMember")) == calls + 1
    finally:
        await db.close()
        await bot.session.close()
