"""The stay signal: at due time, ask Telegram whether an attributed joiner is
still in the channel; if so, queue the channel's follow-up event for that lead.

Leave updates go missing in large chats, so `getChatMember` at the due time is
the truth, not the joins table. Members (and admins, and restricted users who
are still members) stayed; `left` and `kicked` did not and get nothing.

Days are real days. Tests send joins dated days back instead of shrinking the
day: no setting exists that could make an operator's checks fire early.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.types import ChatMember

from bot.adtarget.events import EventType
from bot.backoff import Backoff
from bot.followups import rows as followups
from bot.token_bucket import TokenBucket
from bot.waiting import wait_any
from storage import outbox, stay
from storage.db import Database
from storage.stay import DueCheck

log = logging.getLogger(__name__)

BATCH = 100
IDLE_WAIT = 60.0
SWEEP_EVERY = 60.0  # a safety net; new attributed joins wake the sweep at once
SWEEP_MIN_GAP = 1.0  # a busy poller's wakes are coalesced into one sweep a second
WAITING_POLL = 2.0  # due checks whose conversion is still queued are looked at again
ERROR_WAIT = 5.0
PRESENT = frozenset({"creator", "administrator", "member"})


def is_present(member: ChatMember) -> bool:
    status = _status(member)
    if status == "restricted":
        return bool(getattr(member, "is_member", False))
    return status in PRESENT


def follow_up_row(check: DueCheck, event: EventType, now: float) -> outbox.NewRow:
    """The follow-up event (POST /api/v1/leads/{id}/events) for a member who stayed.

    The row is built (and validated) by bot/followups, but queued by the caller in
    the transaction that closes the check, so not `queue_event`. Its
    Idempotency-Key is fixed by the join and the setting: a check asked again
    after a crash or a restart can never queue or send a second event.

    Raises followups.InvalidFollowUp when AdTarget would refuse the event.
    """
    request = followups.event_request(
        event, channel_id=check.report_id, event_time_ms=int(now * 1000)
    )
    row = followups.event_row(
        check.user_id,
        request,
        idempotency_key=f"jb-stay-{check.chat_id}-{check.user_id}-{check.join_id}-{check.days}d",
        chat_id=check.chat_id,
    )
    # Behind conversions, beside visit forwards: a day's worth of due checks must
    # not delay the joins an advertiser pays for.
    return replace(row, priority=1)


class StayChecker:
    def __init__(
        self,
        bot: Bot,
        db: Database,
        *,
        pacer: TokenBucket,
        wake_courier: Callable[[], None],
        retry_base: float = 2.0,
        retry_cap: float = 600.0,
    ) -> None:
        self._bot = bot
        self._db = db
        self._pacer = pacer
        self._wake_courier = wake_courier
        # Exact waits, no jitter: every check, retried or not, goes out through
        # the pacer, which spreads checks that fall due together.
        self._retry = Backoff(base=retry_base, cap=retry_cap)
        self._wake = asyncio.Event()
        self._sweep_wanted = True
        self._swept_at = -math.inf  # monotonic
        self.checked = 0

    def wake(self) -> None:
        """New attributed joins are committed: schedule their checks soon."""
        self._sweep_wanted = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self._sweep_if_wanted(stop)
                wait = await self._check_due(stop)
            except Exception:
                log.exception("stay checks failed; trying again shortly")
                wait = ERROR_WAIT
            if self._sweep_wanted:
                wait = 0.0
            if wait > 0:
                await wait_any(self._wake, stop, timeout=wait)

    async def _sweep_if_wanted(self, stop: asyncio.Event) -> None:
        since = time.monotonic() - self._swept_at
        if not self._sweep_wanted and since < SWEEP_EVERY:
            return
        if since < SWEEP_MIN_GAP:
            await wait_any(stop, timeout=SWEEP_MIN_GAP - since)
        self._sweep_wanted = False
        scheduled = await stay.sweep(self._db)
        self._swept_at = time.monotonic()
        if scheduled:
            log.info("stay: %d check(s) scheduled", scheduled)

    async def _check_due(self, stop: asyncio.Event) -> float:
        """Check what is due; return how long to sleep before looking again."""
        parked = await stay.close_parked(self._db)
        if parked:
            log.warning("stay: %d check(s) failed: their conversion is parked", parked)
        checks = await stay.due(self._db, now=time.time(), limit=BATCH)
        for check in checks:
            if stop.is_set() or not await self._paced(stop):
                return 0.0
            if not await self._check(check):
                return 0.0  # Telegram said wait: the bucket holds, look again after
        if len(checks) == BATCH:
            return 0.0
        due_at = await stay.next_due_at(self._db)
        if due_at is None:
            return IDLE_WAIT
        now = time.time()
        # Due but not returned by `due`: its conversion is still on its way.
        return WAITING_POLL if due_at <= now else min(IDLE_WAIT, due_at - now)

    async def _paced(self, stop: asyncio.Event) -> bool:
        """A token from the bucket, or False when the bridge stops first (a Telegram
        429 can hold the bucket for minutes; shutdown must not wait for it)."""
        token = asyncio.ensure_future(self._pacer.acquire())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({token, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (token, stopped):
                waiter.cancel()
        return token.done() and not token.cancelled()

    async def _check(self, check: DueCheck) -> bool:
        """Ask Telegram about one member and record the outcome; False on a 429."""
        try:
            # Built first: an event AdTarget would refuse fails the check without
            # asking Telegram. Its eventTime is the time of the check.
            event = follow_up_row(check, EventType.parse(check.event_type), time.time())
        except ValueError as error:  # followups.InvalidFollowUp is one
            await stay.record_failed(self._db, check.id, reason=f"event: {error}")
            return True
        try:
            member = await self._bot.get_chat_member(chat_id=check.chat_id, user_id=check.user_id)
        except TelegramRetryAfter as error:
            self._pacer.hold(float(error.retry_after))
            log.warning("stay: Telegram asks to wait %s s", error.retry_after)
            return False
        except (TelegramBadRequest, TelegramForbiddenError, TelegramNotFound) as error:
            # The chat is gone or the bot may not see its members: asking again
            # will not change the answer.
            log.warning(
                "stay check %d (user %d in %d) failed: %s",
                check.id,
                check.user_id,
                check.chat_id,
                error.message,
            )
            await stay.record_failed(self._db, check.id, reason=error.message)
            return True
        except (TelegramAPIError, OSError, TimeoutError) as error:
            delay = self._retry.delay(check.attempts + 1)  # attempts: failures before
            log.warning(
                "stay check %d: getChatMember failed (%s); again in %.0f s",
                check.id,
                error,
                delay,
            )
            await stay.retry_later(self._db, check.id, at=time.time() + delay, error=str(error))
            return True
        self.checked += 1
        status = _status(member)
        if is_present(member):
            row_id = await stay.record_stayed(self._db, check.id, status=status, event=event)
            log.info(
                "stay check %d: user %d still in %d after %d days; %s queued (row %s)",
                check.id,
                check.user_id,
                check.chat_id,
                check.days,
                event.event_type,
                row_id,
            )
            if row_id is not None:
                self._wake_courier()
        else:
            await stay.record_left(self._db, check.id, status=status)
            log.info(
                "stay check %d: user %d left %d (%s); nothing to send",
                check.id,
                check.user_id,
                check.chat_id,
                status,
            )
        return True


def _status(member: ChatMember) -> str:
    # Every concrete ChatMember has a status (a str enum in aiogram); the base has none.
    status = getattr(member, "status", "")
    return str(getattr(status, "value", status))
