"""Messages to admins: onboarding summaries and alerts, within Telegram's limits.

A queue and one sender: about one message a second per chat, a 429 is waited
out and the message sent afterwards (never dropped). Alerts are deduplicated:
one message per situation, a reminder at most every `remind_after` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramRetryAfter,
)

log = logging.getLogger(__name__)

PER_CHAT_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    chat_id: int
    text: str


class Notifier:
    def __init__(self, bot: Bot, admin_ids: Iterable[int], *, remind_after: float = 3600.0) -> None:
        self._bot = bot
        self.admin_ids = tuple(admin_ids)
        self._remind_after = remind_after
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._last_sent_to: dict[int, float] = {}
        self._alerted: dict[str, float] = {}
        # Messages accepted, and of those the ones settled: sent, or given up on
        # because the chat refuses the bot. Equal when nothing waits to be sent.
        self.queued = 0
        self.settled = 0

    def send(self, chat_id: int, text: str) -> None:
        self.queued += 1
        self._queue.put_nowait(Outgoing(chat_id, text))

    def alert(self, key: str, text: str, *, extra_chats: Iterable[int] = ()) -> bool:
        """Tell the admins, unless this situation was reported within the hour."""
        now = time.monotonic()
        last = self._alerted.get(key)
        if last is not None and now - last < self._remind_after:
            return False
        self._alerted[key] = now
        log.warning("alert %s: %s", key, text.replace("\n", " "))
        for chat_id in dict.fromkeys((*self.admin_ids, *extra_chats)):
            self.send(chat_id, text)
        return True

    def resolved(self, key: str) -> None:
        """The situation is over: a new occurrence is reported at once."""
        self._alerted.pop(key, None)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                return
            await self._deliver(getter.result(), stop)

    async def _deliver(self, message: Outgoing, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = self._last_sent_to.get(message.chat_id, 0.0) + PER_CHAT_INTERVAL
            if wait > time.monotonic():
                await asyncio.sleep(wait - time.monotonic())
            try:
                await self._bot.send_message(
                    message.chat_id,
                    message.text,
                    parse_mode="HTML",
                    disable_web_page_preview=True,
                )
            except TelegramRetryAfter as error:
                log.info(
                    "Telegram flood control: message to %d waits %d s",
                    message.chat_id,
                    error.retry_after,
                )
                await asyncio.sleep(error.retry_after)
                continue
            except (TelegramForbiddenError, TelegramBadRequest) as error:
                # Not started the bot, or blocked it: nothing to do but say so.
                log.warning("cannot message %d: %s", message.chat_id, error.message)
                self.settled += 1
                return
            except (TelegramAPIError, OSError, TimeoutError) as error:
                log.warning("message to %d failed (%s); retrying", message.chat_id, error)
                await asyncio.sleep(5)
                continue
            self._last_sent_to[message.chat_id] = time.monotonic()
            self.settled += 1
            return
