"""PersistentCaller and the stop event: a stop abandons the call in flight; a
cancellation of the caller's own task is never mistaken for one. And its log lines
say what failed: "unreachable" only when no answer came."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramServerError,
)
from aiogram.methods import GetUpdates

from bot.polling.calls import PersistentCaller, failure
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, RunningBridge, eventually


@dataclass
class _Stats:
    consecutive_errors: int = 0


class _SlowBot:
    """A Bot whose calls hang like a long poll, or answer at once with `answer`."""

    def __init__(self, answer: object = None) -> None:
        self.answer = answer
        self.calls = 0
        self.started = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, method: Any, request_timeout: int | None = None) -> object:
        self.calls += 1
        self.started.set()
        if self.answer is not None:
            return self.answer
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return None


def _caller(bot: _SlowBot) -> PersistentCaller:
    return PersistentCaller(cast(Bot, bot), _Stats(), backoff_base=0.01, backoff_cap=0.01)


async def _long_poll(bot: _SlowBot) -> tuple[PersistentCaller, asyncio.Event, asyncio.Task[Any]]:
    """A caller whose getUpdates is in flight, with its stop event."""
    stop = asyncio.Event()
    caller = _caller(bot)
    polling = asyncio.create_task(caller.call_until_ok(GetUpdates(), stop, "getUpdates"))
    await bot.started.wait()
    return caller, stop, polling


async def test_stop_abandons_the_call_in_flight() -> None:
    bot = _SlowBot()
    caller, stop, polling = await _long_poll(bot)
    stop.set()
    assert await asyncio.wait_for(polling, 5) is None
    assert bot.cancelled == 1
    caller.close()


async def test_a_stop_set_before_the_call_makes_none() -> None:
    bot, stop = _SlowBot(answer=["update"]), asyncio.Event()
    stop.set()
    caller = _caller(bot)
    assert await caller.call_until_ok(GetUpdates(), stop, "getUpdates") is None
    assert bot.calls == 0
    caller.close()


async def test_cancelling_the_callers_task_propagates_even_while_stopping() -> None:
    bot = _SlowBot()
    caller, stop, polling = await _long_poll(bot)
    # Both at once: the task's own cancellation must win over "stopping, None".
    stop.set()
    polling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await polling
    assert bot.cancelled == 1
    caller.close()


async def test_answers_pass_through_and_one_watcher_serves_every_call() -> None:
    bot, stop = _SlowBot(answer=["update"]), asyncio.Event()
    caller = _caller(bot)
    before = len(asyncio.all_tasks())
    for _ in range(3):
        assert await caller.call_until_ok(GetUpdates(), stop, "getUpdates") == ["update"]
    # The calls' tasks are done; only the stop watcher stays, one for all calls.
    assert len(asyncio.all_tasks()) == before + 1
    caller.close()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (TelegramNetworkError(GetUpdates(), "connection refused"), "Telegram unreachable"),
        (TimeoutError(), "Telegram unreachable"),
        (TelegramServerError(GetUpdates(), "Internal Server Error"), "Telegram server error"),
        (ClientDecodeError("Failed to decode object", ValueError(), "<html>"), "could not be read"),
        (TelegramBadRequest(GetUpdates(), "Bad Request: wrong offset"), "refused the call"),
    ],
)
def test_only_no_answer_is_called_unreachable(error: Exception, said: str) -> None:
    assert said in failure(error)


async def test_a_server_error_on_get_updates_is_not_logged_as_unreachable(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    telegram.fail_next("getUpdates", 500, "Internal Server Error")
    url = await bridge.mint("00000000-0000-4000-8000-000000016500")
    telegram.join(CHANNEL_ID, 16500, url)
    await adtarget.wait_for_conversions(1)
    # The fault hits the getUpdates after the one in flight; polling goes on after it.
    await eventually(lambda: "Telegram server error on getUpdates" in caplog.text)
    second = await bridge.mint("00000000-0000-4000-8000-000000016501")
    telegram.join(CHANNEL_ID, 16501, second)
    await adtarget.wait_for_conversions(2)
    assert "unreachable" not in caplog.text
