"""The poller: failed handlers keep their update, 409 is explained, outages are waited out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiogram.types import TelegramObject, Update

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, RunningBridge, eventually


async def test_failed_handler_keeps_the_update_and_retries_it(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = 2

    # A fault injected through aiogram's public middleware API, in front of the
    # real join handler: the first two deliveries raise.
    async def flaky(
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("disk hiccup")
        return await handler(event, data)

    bridge.bridge.dispatcher.chat_member.outer_middleware(flaky)
    url = await bridge.mint("00000000-0000-4000-8000-000000009001", fbc="fb.1.1.f")
    update_id = telegram.join(CHANNEL_ID, 9000001, url)
    assert update_id is not None
    # Confirmed to Telegram once stored; handling, and its failures, come after.
    await telegram.wait_confirmed(update_id)
    assert (
        await bridge.scalar("SELECT count(*) FROM updates WHERE update_id = ?", (update_id,)) == 1
    )
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 9000001
    await bridge.wait_scalar("SELECT state FROM updates WHERE update_id = ?", "done", (update_id,))
    assert (
        await bridge.scalar("SELECT attempts FROM updates WHERE update_id = ?", (update_id,)) == 2
    )
    assert bridge.bridge.poller.stats.failed == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"update {update_id} (chat_member) failed" in r.getMessage() for r in errors)


async def test_another_poller_is_reported_as_409(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    # Someone else polls with the same token: Telegram ends our waiting long poll
    # with 409. The other poller calls until one of its calls lands while ours waits.
    def explained() -> bool:
        return any("another process is polling" in r.getMessage() for r in caplog.records)

    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.post(
                f"{telegram.url}/bot{telegram.token}/getUpdates", data={"timeout": "0"}
            ):
                pass
            if explained():
                break
            await asyncio.sleep(0.1)
    await eventually(explained, what="409 explained")
    # And polling carries on afterwards.
    url = await bridge.mint("00000000-0000-4000-8000-000000009002", fbc="fb.1.1.g")
    telegram.join(CHANNEL_ID, 9000002, url)
    await adtarget.wait_for_conversions(1)


async def test_telegram_outage_mid_run_is_waited_out(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    port = int(telegram.url.rsplit(":", 1)[1])
    await telegram.stop()
    await eventually(
        lambda: any("Telegram unreachable" in r.getMessage() for r in caplog.records),
        what="outage logged",
    )
    url_update = telegram.join(CHANNEL_ID, 9000003, None)
    await telegram.start(port=port)
    assert url_update is not None
    await telegram.wait_confirmed(url_update, timeout=10)
    await bridge.wait_scalar("SELECT count(*) FROM joins WHERE user_id = 9000003", 1)
    assert any("Telegram reachable again" in r.getMessage() for r in caplog.records)


async def test_the_inbox_keeps_updates_as_telegram_sent_them(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    url = await bridge.mint("00000000-0000-4000-8000-000000009002", fbc="fb.1.1.r")
    update_id = telegram.join(CHANNEL_ID, 9000002, url)
    await adtarget.wait_for_conversions(1)
    raw = json.loads(
        await bridge.scalar("SELECT raw FROM updates WHERE update_id = ?", (update_id,))
    )
    # Telegram's own field names ("from", not aiogram's "from_user"), and enough
    # to handle the update again after a crash.
    assert raw["update_id"] == update_id
    assert raw["chat_member"]["from"]["id"] == 9000002
    assert raw["chat_member"]["invite_link"]["invite_link"] == url
    again = Update.model_validate(raw)
    assert again.chat_member is not None
    assert again.chat_member.new_chat_member.status == "member"
