"""Bot API calls that must eventually succeed: getMe, deleteWebhook, getUpdates.

Network trouble, 5xx, 409 and 429 are waited out with clear log lines and
backoff; 401 raises BadBotToken, because retrying a wrong token cannot help.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol

from aiogram import Bot
from aiogram.exceptions import (
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)

from bot.waiting import wait_any

log = logging.getLogger("bot.poller")


class BadBotToken(RuntimeError):
    """Telegram answered 401: the token is wrong or revoked. Retrying cannot help."""


class ErrorCount(Protocol):
    consecutive_errors: int


class PersistentCaller:
    def __init__(self, bot: Bot, stats: ErrorCount, *, backoff_base: float, backoff_cap: float):
        self._bot = bot
        self.stats = stats
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap

    async def call_until_ok(
        self,
        method: Any,
        stop: asyncio.Event,
        name: str,
        request_timeout: int | None = None,
    ) -> Any:
        """Call a Bot API method until it answers; None when asked to stop.

        Network trouble, 5xx, 409 and 429 are waited out with clear log lines;
        401 raises BadBotToken.
        """
        while not stop.is_set():
            call = asyncio.ensure_future(self._bot(method, request_timeout=request_timeout))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({call, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not call.done():
                # Stopping: abandon the long poll. Nothing it may have fetched was
                # confirmed, so Telegram hands it out again next time.
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
                return None
            try:
                result = call.result()
            except TelegramUnauthorizedError as error:
                raise BadBotToken(str(error)) from None
            except TelegramRetryAfter as error:
                log.warning("Telegram: %s flood control, waiting %d s", name, error.retry_after)
                await wait_any(stop, timeout=float(error.retry_after))
                continue
            except TelegramConflictError as error:
                delay = self.next_backoff()
                log.error(
                    "Telegram 409 on %s: another process is polling with this bot token, or a"
                    " webhook is set (%s). Stop the other instance; retrying in %.0f s",
                    name,
                    error.message,
                    delay,
                )
                await wait_any(stop, timeout=delay)
                continue
            except Exception as error:
                delay = self.next_backoff()
                log.warning(
                    "Telegram unreachable on %s (%s: %s); retrying in %.1f s",
                    name,
                    type(error).__name__,
                    error,
                    delay,
                )
                await wait_any(stop, timeout=delay)
                continue
            if self.stats.consecutive_errors:
                log.info(
                    "Telegram reachable again after %d failed call(s)",
                    self.stats.consecutive_errors,
                )
                self.stats.consecutive_errors = 0
            return result
        return None

    def next_backoff(self) -> float:
        self.stats.consecutive_errors += 1
        ceiling = min(
            self._backoff_cap,
            self._backoff_base * 2 ** (self.stats.consecutive_errors - 1),
        )
        return float(ceiling / 2 + random.random() * ceiling / 2)
