"""The Telegram fake, driven through a real aiogram Bot over HTTP."""

from __future__ import annotations

import asyncio
import copy
import io
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import BotCommand, BufferedInputFile, ChatMemberUpdated, Update
from pydantic import ValidationError

from bot.simulators.telegram import FakeTelegram
from bot.simulators.telegram_models import (
    OLD_SERVER_OMITS,
    image_size,
    mask_invite_url,
    member_json,
)

CHANNEL = -1001234567890
FOREIGN_URL = "https://t.me/+AbCdEfGhIjKlMnOp"


def make_bot(fake: FakeTelegram, token: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(fake.url))
    return Bot(token or fake.token, session=session)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    server.add_channel(CHANNEL, "Test channel", "test_channel")
    yield server
    await server.stop()


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    client = make_bot(fake)
    yield client
    await client.session.close()


async def test_get_me(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (123456, "joinbridge_test_bot", True)
    assert [c.method for c in fake.calls] == ["getMe"]


async def test_long_poll_wakes_on_enqueue_and_offset_confirms(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=10, allowed_updates=["message"]))
    await fake.wait_for_call("getUpdates")
    started = time.monotonic()
    update_id = fake.message(42, 42, "/start ref")
    assert update_id is not None
    updates = await poll
    assert time.monotonic() - started < 2
    assert [u.update_id for u in updates] == [update_id]
    message = updates[0].message
    assert message is not None
    assert message.text == "/start ref"
    assert message.entities is not None
    assert message.entities[0].type == "bot_command"
    assert fake.allowed_updates == ["message"]

    # Unconfirmed: served again. Confirming with offset = id + 1 forgets it.
    assert [u.update_id for u in await bot.get_updates(timeout=0)] == [update_id]
    assert await bot.get_updates(offset=update_id + 1, timeout=0) == []
    await fake.wait_confirmed(update_id)
    assert fake.confirmed_offset == update_id + 1
    assert fake.pending == []
    assert fake.updates_served == 2
    # allowed_updates was omitted by the later calls: the setting stays.
    assert fake.allowed_updates == ["message"]


async def test_allowed_updates_filter_at_enqueue(fake: FakeTelegram, bot: Bot) -> None:
    assert fake.join(CHANNEL, 7) is None  # never polled: chat_member is opt-in
    await bot.get_updates(timeout=0, allowed_updates=["message", "my_chat_member"])
    assert fake.join(CHANNEL, 8) is None
    await bot.get_updates(timeout=0, allowed_updates=["chat_member"])
    assert fake.join(CHANNEL, 9) is not None
    updates = await bot.get_updates(timeout=0)
    assert len(updates) == 1
    assert updates[0].chat_member is not None
    assert updates[0].chat_member.new_chat_member.user.id == 9
    # Dropped updates are gone, but the joins happened: getChatMember knows.
    member = await bot.get_chat_member(CHANNEL, 8)
    assert member.status == "member"
    assert (await bot.get_chat_member(CHANNEL, 12345)).status == "left"


async def join_update(bot: Bot, offset: int | None = None) -> ChatMemberUpdated:
    updates = await bot.get_updates(offset=offset, timeout=1)
    assert updates
    assert updates[-1].chat_member is not None
    return updates[-1].chat_member


async def test_own_link_is_full_and_foreign_link_masked(fake: FakeTelegram, bot: Bot) -> None:
    await bot.get_updates(timeout=0, allowed_updates=["chat_member"])
    link = await bot.create_chat_invite_link(CHANNEL, name="campaign-1", member_limit=5)
    assert link.invite_link.startswith("https://t.me/+")
    assert len(link.invite_link) == 30
    assert link.creator.id == 123456
    assert not link.is_revoked
    assert fake.links[link.invite_link]["chat_id"] == CHANNEL

    first = fake.join(CHANNEL, 42, link.invite_link)
    event = await join_update(bot)
    assert event.invite_link is not None
    assert event.invite_link.invite_link == link.invite_link
    assert (event.invite_link.name, event.invite_link.member_limit) == ("campaign-1", 5)
    assert event.from_user.id == 42
    assert event.via_join_request is None

    assert first is not None
    fake.join(CHANNEL, 43, FOREIGN_URL)
    event = await join_update(bot, offset=first + 1)
    assert event.invite_link is not None
    # ASCII dots, as in a real capture (telegram-payloads/14_...masked_other_admin...).
    assert event.invite_link.invite_link == "https://t.me/+AbCdEfGh..."
    assert event.invite_link.creator.id != 123456


async def test_invite_link_errors_and_revoke(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="name is too long"):
        await bot.create_chat_invite_link(CHANNEL, name="x" * 33)
    with pytest.raises(TelegramBadRequest, match="administrator approval"):
        await bot.create_chat_invite_link(CHANNEL, member_limit=1, creates_join_request=True)
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.create_chat_invite_link(-100999)
    fake.add_channel(-100555, "No rights", bot_rights={"can_invite_users": False})
    with pytest.raises(TelegramBadRequest, match="not enough rights"):
        await bot.create_chat_invite_link(-100555)

    link = await bot.create_chat_invite_link("@test_channel", member_limit=1)
    edited = await bot.edit_chat_invite_link(CHANNEL, link.invite_link, name="renamed")
    assert edited.name == "renamed"
    assert edited.member_limit is None
    revoked = await bot.revoke_chat_invite_link(CHANNEL, link.invite_link)
    assert revoked.is_revoked
    with pytest.raises(ValueError, match="revoked"):
        fake.join(CHANNEL, 5, link.invite_link)


async def test_rate_limit_raises_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.limit_method("createChatInviteLink", per_minute=2)
    await bot.create_chat_invite_link(CHANNEL)
    await bot.create_chat_invite_link(CHANNEL)
    with pytest.raises(TelegramRetryAfter) as limited:
        await bot.create_chat_invite_link(CHANNEL)
    assert 55 <= limited.value.retry_after <= 60

    fake.fail_next("getMe", 429, "Too Many Requests: retry after 7", retry_after=7)
    with pytest.raises(TelegramRetryAfter) as failed:
        await bot.get_me()
    assert failed.value.retry_after == 7
    assert (await bot.get_me()).id == 123456  # the fault was used up


async def test_wire_format_of_errors(fake: FakeTelegram) -> None:
    fake.limit_method("getMe", per_minute=0)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/bot{fake.token}/getMe") as resp:
            assert resp.status == 429
            body = await resp.json()
        assert body == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 60",
            "parameters": {"retry_after": 60},
        }
        async with http.post(f"{fake.url}/bot{fake.token}/noSuchMethod", json={}) as resp:
            assert resp.status == 404
            assert (await resp.json())["description"] == "Not Found: method not found"
        payload = {"chat_id": CHANNEL, "user_id": 123456}
        async with http.post(f"{fake.url}/bot{fake.token}/getChatMember", json=payload) as resp:
            assert (await resp.json())["result"]["status"] == "administrator"
    assert fake.calls_to("getchatmember")[0].params == payload


async def test_unauthorized(fake: FakeTelegram, bot: Bot) -> None:
    stranger = make_bot(fake, token="999:wrong-token")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await stranger.get_me()
    finally:
        await stranger.session.close()
    fake.reject_token()
    with pytest.raises(TelegramUnauthorizedError):
        await bot.get_me()
    fake.reject_token(False)
    await bot.get_me()


async def test_webhook_conflict(fake: FakeTelegram, bot: Bot) -> None:
    fake.set_webhook("https://example.com/hook")
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates(timeout=0)
    assert (await bot.get_webhook_info()).url == "https://example.com/hook"
    assert await bot.delete_webhook(drop_pending_updates=False)
    assert await bot.get_updates(timeout=0) == []


async def test_newer_poll_ends_older_one(fake: FakeTelegram, bot: Bot) -> None:
    older = asyncio.create_task(bot.get_updates(timeout=10))
    await fake.wait_for_call("getUpdates")
    assert await bot.get_updates(timeout=0) == []
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates"):
        await older


async def test_approve_join_request_emits_member_update(fake: FakeTelegram, bot: Bot) -> None:
    await bot.get_updates(timeout=0, allowed_updates=["chat_member", "chat_join_request"])
    link = await bot.create_chat_invite_link(CHANNEL, creates_join_request=True)
    request_id = fake.join_request(CHANNEL, 77, link.invite_link)
    assert request_id is not None
    [update] = await bot.get_updates(timeout=0)
    assert update.chat_join_request is not None
    assert update.chat_join_request.user_chat_id == 77

    assert await bot.approve_chat_join_request(CHANNEL, 77)
    event = await join_update(bot, offset=request_id + 1)
    assert event.via_join_request is True
    assert event.from_user.id == 123456
    assert event.invite_link is not None
    assert event.invite_link.invite_link == link.invite_link
    assert event.new_chat_member.user.id == 77

    with pytest.raises(TelegramBadRequest, match="HIDE_REQUESTER_MISSING"):
        await bot.approve_chat_join_request(CHANNEL, 77)


async def test_approve_without_member_update(fake: FakeTelegram, bot: Bot) -> None:
    fake.emit_member_update_on_approve = False
    await bot.get_updates(timeout=0, allowed_updates=["chat_member", "chat_join_request"])
    request_id = fake.join_request(CHANNEL, 78, None)
    assert request_id is not None
    assert await bot.approve_chat_join_request(CHANNEL, 78)
    assert await bot.get_updates(offset=request_id + 1, timeout=0) == []
    assert (await bot.get_chat_member(CHANNEL, 78)).status == "member"


async def test_membership_and_chat_queries(fake: FakeTelegram, bot: Bot) -> None:
    fake.join(CHANNEL, 5)
    assert await bot.get_chat_member_count(CHANNEL) == 3  # owner, bot, user 5
    fake.leave(CHANNEL, 5)
    assert (await bot.get_chat_member(CHANNEL, 5)).status == "left"
    chat = await bot.get_chat(CHANNEL)
    assert (chat.id, chat.title, chat.type) == (CHANNEL, "Test channel", "channel")
    admins = await bot.get_chat_administrators(CHANNEL)
    assert {a.user.id for a in admins} == {1, 123456}
    assert fake.bot_status_change(CHANNEL, "left") is not None  # my_chat_member is default
    [update] = await bot.get_updates(timeout=0)
    assert update.my_chat_member is not None
    assert update.my_chat_member.old_chat_member.status == "administrator"


async def test_messages_and_commands(fake: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(42, "hello")
    assert fake.sent_messages[0]["text"] == "hello"
    assert sent.chat.id == 42
    edited = await bot.edit_message_text("bye", chat_id=42, message_id=sent.message_id)
    assert not isinstance(edited, bool)
    assert edited.text == "bye"
    with pytest.raises(TelegramBadRequest, match="not modified"):
        await bot.edit_message_text("bye", chat_id=42, message_id=sent.message_id)
    await bot.send_message(42, "123")  # numeric text must stay text
    assert fake.sent_messages[1]["text"] == "123"

    assert await bot.set_my_commands([BotCommand(command="start", description="Start")])
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert await bot.delete_my_commands()
    assert await bot.get_my_commands() == []


async def test_stop_ends_pending_poll(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_for_call("getUpdates")
    started = time.monotonic()
    await fake.stop()
    assert await poll == []
    assert time.monotonic() - started < 2


async def test_dispatcher_polling_end_to_end(fake: FakeTelegram, bot: Bot) -> None:
    dp = Dispatcher()
    seen: list[int] = []
    done = asyncio.Event()

    @dp.chat_member()
    async def on_member(event: ChatMemberUpdated) -> None:
        seen.append(event.new_chat_member.user.id)
        done.set()

    polling = asyncio.create_task(
        dp.start_polling(bot, handle_signals=False, close_bot_session=False, polling_timeout=1)
    )
    await fake.wait_for_call("getUpdates")
    update_id = fake.join(CHANNEL, 501)
    assert update_id is not None  # derived allowed_updates include chat_member
    await asyncio.wait_for(done.wait(), 5)
    await fake.wait_confirmed(update_id)
    await dp.stop_polling()
    await polling
    assert seen == [501]


async def test_member_limit_slot_freed_by_leave(fake: FakeTelegram, bot: Bot) -> None:
    link = await bot.create_chat_invite_link(CHANNEL, member_limit=1)
    fake.join(CHANNEL, 1001, link.invite_link)
    with pytest.raises(ValueError, match="member_limit"):
        fake.join(CHANNEL, 1002, link.invite_link)
    fake.leave(CHANNEL, 1001)
    fake.join(CHANNEL, 1002, link.invite_link)
    assert (await bot.get_chat_member(CHANNEL, 1002)).status == "member"


async def test_multipart_body_is_accepted(fake: FakeTelegram) -> None:
    form = aiohttp.FormData()
    form.add_field("chat_id", str(CHANNEL))
    form.add_field("name", "123")
    form.add_field("doc", b"file bytes", filename="a.txt")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fake.url}/bot{fake.token}/createChatInviteLink", data=form) as resp,
    ):
        body = await resp.json()
    assert body["ok"] is True
    assert body["result"]["name"] == "123"
    [call] = fake.calls_to("createChatInviteLink")
    assert call.params["chat_id"] == CHANNEL
    assert call.raw["doc"] == "file bytes"


def tiny_png(width: int, height: int) -> bytes:
    """A valid PNG of that size, all black: 8-bit greyscale, each row filter 0."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4)

    header = width.to_bytes(4) + height.to_bytes(4) + bytes([8, 0, 0, 0, 0])
    pixels = zlib.compress(bytes(height * (width + 1)))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_image_size_reads_png_and_jpeg_headers() -> None:
    assert image_size(tiny_png(640, 480)) == (640, 480)
    # A JPEG's size is in its frame header (SOF0), after any other segments (APP0).
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0\x00\x11\x08" + (720).to_bytes(2) + (1280).to_bytes(2) + b"\x03"
    assert image_size(b"\xff\xd8" + app0 + sof0 + bytes(12)) == (1280, 720)
    assert image_size(b"\xff\xd8" + app0) is None  # cut short
    assert image_size(b"GIF89a") is None


async def test_send_photo_takes_aiogram_uploads(fake: FakeTelegram, bot: Bot) -> None:
    png = tiny_png(320, 200)
    sent = await bot.send_photo(
        42, BufferedInputFile(png, filename="c.png"), caption="<b>hi</b>", parse_mode="HTML"
    )
    assert sent.chat.id == 42
    assert sent.caption == "<b>hi</b>"
    assert sent.photo is not None
    assert (sent.photo[-1].width, sent.photo[-1].height) == (320, 200)
    assert sent.photo[-1].file_size == len(png)
    [call] = fake.calls_to("sendPhoto")
    assert call.raw["photo"].startswith("attach://")  # aiogram names another part
    assert call.upload("photo") == png
    assert fake.sent_messages[-1]["photo"][0]["file_id"] == sent.photo[-1].file_id
    # A photo has no text to edit.
    with pytest.raises(TelegramBadRequest, match="there is no text in the message to edit"):
        await bot.edit_message_text("x", chat_id=42, message_id=sent.message_id)


async def test_send_photo_wire_forms_and_refusals(fake: FakeTelegram) -> None:
    """The photo as the `photo` part itself (as curl -F sends it), and what the Bot
    API refuses: a file it does not hold, a file that is no image, odd dimensions."""

    async def post(photo: bytes | str, chat: str = "42") -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("chat_id", chat)
        if isinstance(photo, str):
            form.add_field("photo", photo)
        else:
            # As a stream: aiohttp refuses to wrap bytes over 1 MB for a form by itself.
            form.add_field("photo", io.BytesIO(photo), filename="p.png", content_type="image/png")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{fake.url}/bot{fake.token}/sendPhoto", data=form) as resp,
        ):
            body: dict[str, Any] = await resp.json()
        return body

    png = tiny_png(30, 40)
    body = await post(png)
    assert body["ok"] is True, body
    assert body["result"]["photo"][0]["width"] == 30
    assert fake.calls_to("sendPhoto")[-1].upload("photo") == png
    refusals = {
        "AgACAgIAAxkBAAIBZ2Vx": "wrong file identifier/HTTP URL specified",
        b"GIF89a not a photo we can read": "IMAGE_PROCESS_FAILED",
        tiny_png(2, 100): "PHOTO_INVALID_DIMENSIONS",
    }
    for photo, description in refusals.items():
        body = await post(photo)
        assert body == {
            "ok": False,
            "error_code": 400,
            "description": f"Bad Request: {description}",
        }
    assert (await post(png, chat="-100999"))["description"] == "Bad Request: chat not found"
    # Larger than aiohttp's default 1 MB body: the Bot API takes photos up to 10 MB.
    noise = tiny_png(1500, 1500)[:-12] + bytes(3 * 2**20) + tiny_png(1, 1)[-12:]
    assert (await post(noise))["ok"] is True


# ---- server shapes: what real and self-hosted Bot API servers send ----------------------

MEMBER_KINDS = ["chat_member", "my_chat_member", "chat_join_request"]


async def raw_updates(fake: FakeTelegram, **params: Any) -> list[dict[str, Any]]:
    """getUpdates over HTTP, as JSON: the wire shape, before aiogram validates it."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fake.url}/bot{fake.token}/getUpdates", json=params) as resp,
    ):
        body = await resp.json()
    assert body["ok"] is True
    result: list[dict[str, Any]] = body["result"]
    return result


def members_of(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        event[key]
        for update in updates
        for kind in ("chat_member", "my_chat_member")
        if (event := update.get(kind)) is not None
        for key in ("old_chat_member", "new_chat_member")
    ]


async def test_omit_fields_drops_them_at_every_member_status(fake: FakeTelegram) -> None:
    await raw_updates(fake, timeout=0, allowed_updates=MEMBER_KINDS)
    omitted = OLD_SERVER_OMITS | {"is_anonymous", "until_date"}
    fake.omit_fields = omitted
    fake.join(CHANNEL, 5, new_status="restricted")  # left -> restricted
    fake.leave(CHANNEL, 5, new_status="kicked")  # restricted -> kicked
    fake.join(CHANNEL, 6)  # left -> member
    fake.join(CHANNEL, 7, new_status="administrator")
    fake.join(CHANNEL, 8, new_status="creator")
    fake.bot_status_change(CHANNEL, "administrator", rights={"can_manage_direct_messages": True})
    fake.join_request(CHANNEL, 9, None)
    updates = await raw_updates(fake, timeout=0)

    assert [next(k for k in u if k != "update_id") for u in updates] == [
        *["chat_member"] * 5,
        "my_chat_member",
        "chat_join_request",
    ]
    members = members_of(updates)
    statuses = {m["status"] for m in members}
    assert statuses == {"left", "member", "restricted", "kicked", "administrator", "creator"}
    for member in members:
        assert not set(member) & omitted, member
        assert set(member) >= {"status", "user"}
    # The rest of each object is still sent.
    restricted = updates[0]["chat_member"]["new_chat_member"]
    assert restricted["is_member"] is True
    assert restricted["can_send_messages"] is False
    assert updates[5]["my_chat_member"]["new_chat_member"]["can_invite_users"] is True
    # What makes it an old server's update: aiogram 3.31 rejects these members.
    for update in (updates[0], updates[3], updates[5]):
        with pytest.raises(ValidationError):
            Update.model_validate(update)
    # Only the updates change: the world's own member objects keep every field.
    async with aiohttp.ClientSession() as http:
        url = f"{fake.url}/bot{fake.token}/getChatMember"
        async with http.post(url, json={"chat_id": CHANNEL, "user_id": 5}) as resp:
            assert (await resp.json())["result"]["until_date"] == 0


async def test_extra_fields_reach_payload_and_members(fake: FakeTelegram) -> None:
    await raw_updates(fake, timeout=0, allowed_updates=[*MEMBER_KINDS, "message"])
    extra = {"new_field": {"nested": 1}, "tag": "vip"}
    fake.extra_fields = extra
    fake.omit_fields = frozenset({"tag"})  # omission wins over extras in members
    fake.join(CHANNEL, 5)
    fake.bot_status_change(CHANNEL, "administrator")
    fake.join_request(CHANNEL, 6, None)
    fake.message(6, 6, "hi")  # not a member update: left as it is
    join, promoted, request, message = await raw_updates(fake, timeout=0)

    for event in (join["chat_member"], promoted["my_chat_member"], request["chat_join_request"]):
        assert event["new_field"] == {"nested": 1}
        assert event["tag"] == "vip"
    for member in members_of([join, promoted]):
        assert member["new_field"] == {"nested": 1}
        assert "tag" not in member
    assert set(message["message"]) == {"message_id", "date", "chat", "text", "from"}
    # A newer server's fields are what aiogram tolerates.
    Update.model_validate(join)


def test_member_json_unknown_status_only_when_allowed() -> None:
    user = {"id": 5, "is_bot": False, "first_name": "Test"}
    with pytest.raises(ValueError, match="unknown chat member status 'memebr'"):
        member_json("memebr", user)
    assert member_json("subscriber", user, allow_unknown=True) == {
        "status": "subscriber",
        "user": user,
    }
    assert member_json("subscriber", user, is_member=False, allow_unknown=True) == {
        "status": "subscriber",
        "user": user,
        "is_member": False,
    }
    # Known statuses are unchanged by the flag.
    assert member_json("member", user, allow_unknown=True) == {"status": "member", "user": user}
    assert member_json("restricted", user)["is_member"] is True


async def test_unknown_status_accepted_only_when_asked(fake: FakeTelegram) -> None:
    await raw_updates(fake, timeout=0, allowed_updates=MEMBER_KINDS)
    with pytest.raises(ValueError, match="unknown chat member status"):
        fake.join(CHANNEL, 5, new_status="subscriber")
    with pytest.raises(ValueError, match="unknown chat member status"):
        fake.join(CHANNEL, 5, old_status="gone")
    fake.join(CHANNEL, 5)
    with pytest.raises(ValueError, match="unknown chat member status"):
        fake.leave(CHANNEL, 5, new_status="gone")
    with pytest.raises(ValueError, match="unknown chat member status"):
        fake.bot_status_change(CHANNEL, "supervisor")
    [only] = await raw_updates(fake, timeout=0)  # the rejected events left no update
    assert only["chat_member"]["new_chat_member"]["status"] == "member"

    fake.allow_unknown_status = True
    user = {"id": 5, "is_bot": False, "first_name": "Test"}
    joined = fake.join(CHANNEL, 5, old_status="gone", new_status="subscriber")
    assert joined is not None
    fake.leave(CHANNEL, 5, new_status="gone")
    fake.bot_status_change(CHANNEL, "supervisor")
    join, leave, bot = await raw_updates(fake, offset=joined, timeout=0)
    assert join["chat_member"]["old_chat_member"] == {
        "status": "gone",
        "user": user,
        "is_member": False,
    }
    subscriber = {"status": "subscriber", "user": user, "is_member": True}
    assert join["chat_member"]["new_chat_member"] == subscriber
    assert leave["chat_member"]["old_chat_member"] == subscriber
    assert leave["chat_member"]["new_chat_member"]["status"] == "gone"
    assert bot["my_chat_member"]["old_chat_member"]["status"] == "administrator"
    assert bot["my_chat_member"]["new_chat_member"] == {
        "status": "supervisor",
        "user": fake.bot_user,
    }
    # The server still answers about a bot in that status.
    async with aiohttp.ClientSession() as http:
        url = f"{fake.url}/bot{fake.token}/getChatMember"
        async with http.post(url, json={"chat_id": CHANNEL, "user_id": 123456}) as resp:
            assert (await resp.json())["result"]["status"] == "supervisor"


async def test_masked_link_uses_ascii_dots(fake: FakeTelegram) -> None:
    assert mask_invite_url("https://t.me/+AbCdEfGhIjKlMnOp") == "https://t.me/+AbCdEfGh..."
    # The older link form, as in the real capture of a masked link.
    assert mask_invite_url("https://t.me/joinchat/AbCdEfGhIj") == "https://t.me/joinchat/AbCdE..."
    await raw_updates(fake, timeout=0, allowed_updates=["chat_member"])
    fake.join(CHANNEL, 5, FOREIGN_URL)
    [update] = await raw_updates(fake, timeout=0)
    link = update["chat_member"]["invite_link"]
    assert link["invite_link"] == "https://t.me/+AbCdEfGh..."
    assert link["creator"]["id"] == 1


# /work/shared/telegram-payloads/02_supergroup_member_to_restricted.json (a Bot API 6.3
# server; aiogram 3.31 rejects it), retargeted to CHANNEL.
CAPTURED_RESTRICTION: dict[str, Any] = {
    "update_id": 900000002,
    "chat_member": {
        "chat": {"id": CHANNEL, "title": "Chat 1", "username": "example_65", "type": "supergroup"},
        "from": {
            "id": 5100000002,
            "is_bot": True,
            "first_name": "First3",
            "username": "example_bot_392_bot",
        },
        "date": 1669256314,
        "old_chat_member": {
            "user": {"id": 5100000001, "is_bot": False, "first_name": "First2"},
            "status": "member",
        },
        "new_chat_member": {
            "user": {"id": 5100000001, "is_bot": False, "first_name": "First2"},
            "status": "restricted",
            "until_date": 0,
            "can_send_messages": False,
            "can_send_media_messages": False,
            "can_send_polls": False,
            "can_send_other_messages": False,
            "can_add_web_page_previews": False,
            "can_change_info": False,
            "can_invite_users": False,
            "can_pin_messages": False,
            "can_manage_topics": False,
            "is_member": True,
        },
    },
}


async def test_enqueue_raw_keeps_the_payload_but_update_id(fake: FakeTelegram) -> None:
    original = copy.deepcopy(CAPTURED_RESTRICTION)
    assert fake.enqueue_raw(original) is None  # chat_member is opt-in: filtered
    await raw_updates(fake, timeout=0, allowed_updates=["chat_member", "my_chat_member"])
    fake.bot_status_change(CHANNEL, "left")  # no admin check: still delivered
    fake.extra_fields, fake.omit_fields = {"x": 1}, frozenset({"until_date"})  # not applied
    update_id = fake.enqueue_raw(original)
    assert update_id is not None
    original["chat_member"]["date"] = 0  # the caller's later edits do not leak in
    assert fake.join(CHANNEL, 7) is None  # the bot left: a simulated join is not sent

    [_, replayed] = await raw_updates(fake, timeout=0)
    assert replayed == {**CAPTURED_RESTRICTION, "update_id": update_id}
    assert update_id != CAPTURED_RESTRICTION["update_id"]
    assert list(replayed) == ["update_id", "chat_member"]
    with pytest.raises(ValidationError):  # an old server's shape, as captured
        Update.model_validate(replayed)
    # Numbering goes on from the replayed update.
    assert fake.bot_status_change(CHANNEL, "administrator") == update_id + 1

    with pytest.raises(ValueError, match="exactly one kind"):
        fake.enqueue_raw({"update_id": 1, "chat_member": {}, "message": {}})
    with pytest.raises(ValueError, match="exactly one kind"):
        fake.enqueue_raw({"update_id": 1})
