"""The bridge's aiogram session against the Telegram fake: answers parse as with
aiogram's own, errors still raise aiogram's exceptions, and each answer's model
class is built once per process, not again after every garbage collection."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import GetUpdates
from aiogram.methods.base import Response
from aiogram.types import ChatInviteLink

from bot.polling.session import UpdatesSession
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID as CHANNEL


@pytest.fixture
async def bot(telegram: FakeTelegram) -> AsyncIterator[Bot]:
    api = TelegramAPIServer.from_base(telegram.url)
    client = Bot(telegram.token, session=UpdatesSession(api=api))
    yield client
    await client.session.close()


async def test_an_answers_model_class_outlives_garbage_collection(bot: Bot) -> None:
    link = await bot.create_chat_invite_link(CHANNEL, member_limit=1)
    assert isinstance(link, ChatInviteLink)
    # pydantic's cache of parametrised models is weak: only a reference held
    # elsewhere keeps the class from being dropped and built again.
    model = weakref.ref(Response[ChatInviteLink])
    gc.collect()
    assert model() is not None
    revoked = await bot.revoke_chat_invite_link(CHANNEL, link.invite_link)
    assert revoked.is_revoked
    assert Response[ChatInviteLink] is model()


async def test_errors_still_raise_aiograms_exceptions(bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.create_chat_invite_link(-100999)


async def test_updates_parse_and_keep_their_raw_json(telegram: FakeTelegram, bot: Bot) -> None:
    # Telegram drops chat_member updates at queue time unless asked for first.
    assert await bot(GetUpdates(timeout=0, allowed_updates=["chat_member"])) == []
    telegram.join(CHANNEL, 42, None)
    method = GetUpdates(timeout=0, allowed_updates=["chat_member"])
    updates = await bot(method)
    assert [u.event_type for u in updates] == ["chat_member"]
    assert isinstance(bot.session, UpdatesSession)
    read = bot.session.take_read(method)
    assert read is not None
    assert list(read.raw) == [updates[0].update_id]
    assert read.raw[updates[0].update_id]["chat_member"]["chat"]["id"] == CHANNEL
    assert read.unreadable == []
    assert read.last_update_id == updates[0].update_id
    assert bot.session.take_read(method) is None  # handed over once
