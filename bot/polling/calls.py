"""Bot API calls that must eventually succeed: getMe, deleteWebhook, getUpdates.

Network trouble, 5xx, unreadable answers, 409 and 429 are waited out with log
lines that say which it was, and backoff; 401 raises BadBotToken, because
retrying a wrong token cannot help.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramConflictError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)

from bot.backoff import Backoff
from bot.waiting import wait_any

log = logging.getLogger("bot.polling.poller")


class BadBotToken(RuntimeError):
    """Telegram answered 401: the token is wrong or revoked. Retrying cannot help."""


def failure(error: Exception) -> str:
    """What went wrong, in words an operator acts on: "unreachable" only when no
    answer came, so a server error or an unreadable answer is not mistaken for a
    network outage."""
    if isinstance(error, TelegramServerError):
        return "Telegram server error"
    if isinstance(error, ClientDecodeError):
        return "Telegram's answer could not be read"
    if isinstance(error, TelegramAPIError) and not isinstance(error, TelegramNetworkError):
        return "Telegram refused the call"
    return "Telegram unreachable"


class ErrorCount(Protocol):
    consecutive_errors: int


class PersistentCaller:
    def __init__(self, bot: Bot, stats: ErrorCount, *, backoff_base: float, backoff_cap: float):
        self._bot = bot
        self.stats = stats
        # Jittered over the upper half of each wait, so the retries do not fall
        # into step with another poller's on the same token (a 409 each turn).
        self._backoff = Backoff(base=backoff_base, cap=backoff_cap, jitter=0.5)
        # One task watches the stop event for every call, and cancels the call in
        # flight when it is set. Racing each call against a fresh `stop.wait()`
        # task through asyncio.wait cost two tasks and an extra turn of the event
        # loop per long poll: ~20 µs between a lone join's answer and its handling
        # on an idle machine (bench/RESULTS.md, seventh session).
        self._watching: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[Any] | None = None

    def close(self) -> None:
        """Stop watching the stop event (the caller's owner is done with it)."""
        if self._watcher is not None:
            self._watcher.cancel()
        self._watcher = self._watching = None

    def _watch(self, stop: asyncio.Event) -> None:
        if self._watching is stop:
            return
        self.close()
        self._watching = stop
        self._watcher = asyncio.create_task(self._cut_on(stop), name="telegram-calls-stop")

    async def _cut_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self._in_flight is not None:
            self._in_flight.cancel()

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
            self._watch(stop)
            # A task of its own: the watcher cancels the call, never our task.
            call = self._in_flight = asyncio.ensure_future(
                self._bot(method, request_timeout=request_timeout)
            )
            try:
                result = await call
            except asyncio.CancelledError:
                this = asyncio.current_task()
                if call.cancelled() and stop.is_set() and not (this and this.cancelling()):
                    # Stopping: the watcher abandoned the long poll. Nothing it may
                    # have fetched was confirmed, so Telegram hands it out again.
                    return None
                raise  # our own task is being cancelled: not ours to swallow
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
                    "%s on %s (%s: %s); retrying in %.1f s",
                    failure(error),
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
        return self._backoff.delay(self.stats.consecutive_errors)
