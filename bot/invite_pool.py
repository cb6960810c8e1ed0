"""Invite pools: links minted ahead of demand, so a landing page never waits on
Telegram's rate limit for link creation.

A background loop keeps `size` usable links per tracked channel (in the
channel's mode), replaces links near expiry, and revokes personal links once
their visitor has joined (member_limit counts members present at once, so a
leave would free the slot for someone else).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter

from bot.invites import InviteMinter
from bot.logs import ids
from bot.waiting import wait_any
from storage import channels, invite_pool, visits
from storage.channels import Channel
from storage.db import Database
from storage.invite_links import InviteLink
from storage.visits import Attribution

log = logging.getLogger(__name__)

# A link handed to a visitor who has not joined yet stays theirs while it has
# at least this long to live.
REUSE_MIN_LIFE = 60.0
IDLE_WAIT = 60.0
EMPTY_ALERT_AFTER = 300.0


class PoolEmpty(Exception):
    """No pool link, and Telegram says wait before creating another."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"invite pool empty; Telegram asks to wait {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class PoolState:
    chat_id: int
    title: str
    mode: str
    size: int
    target: int


class InvitePool:
    def __init__(
        self, bot: Bot, minter: InviteMinter, db: Database, *, size: int, pace: float = 0.05
    ) -> None:
        self._bot = bot
        self._minter = minter
        self._db = db
        self.size = size
        self._pace = pace
        self._wake = asyncio.Event()
        self._telegram_wait_until = 0.0  # monotonic
        self._mint_locks: dict[int, asyncio.Lock] = {}
        self._empty_since: dict[int, float] = {}
        # Told (chat id, title) when a pool has stayed empty for EMPTY_ALERT_AFTER.
        self.on_empty: Callable[[int, str], None] = lambda chat_id, title: None
        self.minted = 0
        self.revoked = 0

    @property
    def min_life(self) -> float:
        """Pool links are handed out only while they have this much life left."""
        return min(self._minter.ttl / 2, 24 * 3600.0)

    def wake(self) -> None:
        self._wake.set()

    def telegram_wait(self) -> float:
        return max(self._telegram_wait_until - time.monotonic(), 0.0)

    async def invite_for(self, channel: Channel, visit: Attribution) -> InviteLink:
        """The visitor's link in this channel: the one already given, a pool link,
        or, with the pool empty, one minted now."""
        now = time.time()
        request_mode = channel.mode == "request"
        async with self._db.transaction() as conn:
            visit_id = await visits.ensure(conn, visit)
            link = await invite_pool.find_assigned(
                conn, visit_id=visit_id, chat_id=channel.chat_id, usable_after=now + REUSE_MIN_LIFE
            )
            if link is not None and link.creates_join_request == request_mode:
                return link
            link = await invite_pool.take(
                conn,
                chat_id=channel.chat_id,
                creates_join_request=request_mode,
                visit_id=visit_id,
                usable_after=now + self.min_life,
            )
        self._wake.set()
        if link is not None:
            return link
        # One on-demand mint at a time per channel: a crowd arriving at an empty
        # pool must not turn into a crowd of createChatInviteLink calls.
        async with self._mint_locks.setdefault(channel.chat_id, asyncio.Lock()):
            if self.telegram_wait() > 0:
                raise PoolEmpty(self.telegram_wait())
            log.warning(
                "invite pool of %d is empty: minting on demand",
                channel.chat_id,
                extra=ids(chat_id=channel.chat_id),
            )
            try:
                return await self._minter.mint_for_visitor(
                    channel.chat_id, visit, record_visit=False
                )
            except TelegramRetryAfter as error:
                self._hold(error.retry_after)
                raise PoolEmpty(float(error.retry_after)) from None

    def _hold(self, seconds: float) -> None:
        self._telegram_wait_until = max(self._telegram_wait_until, time.monotonic() + seconds)
        log.warning("Telegram rate-limits invite links: waiting %.0f s", seconds)

    async def states(self) -> list[PoolState]:
        sizes = await invite_pool.sizes(self._db, usable_after=time.time() + self.min_life)
        return [
            PoolState(
                c.chat_id,
                c.title,
                c.mode,
                sizes.get((c.chat_id, c.mode == "request"), 0),
                self.size if c.active and c.can_invite_users else 0,
            )
            for c in await channels.list_all(self._db)
        ]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self._revoke_used(stop)
                await self._refill(stop)
            except Exception:
                log.exception("invite pool upkeep failed; trying again shortly")
            wait = self.telegram_wait() or IDLE_WAIT
            await wait_any(self._wake, stop, timeout=wait)

    async def _refill(self, stop: asyncio.Event) -> None:
        usable_after = time.time() + self.min_life
        dropped = await invite_pool.discard_stale(self._db, usable_after=usable_after)
        if dropped:
            log.info("invite pools: %d link(s) near expiry or of the wrong mode replaced", dropped)
        sizes = await invite_pool.sizes(self._db, usable_after=usable_after)
        for channel in await channels.list_all(self._db):
            if not (channel.active and channel.can_invite_users):
                continue
            have = sizes.get((channel.chat_id, channel.mode == "request"), 0)
            self._watch_empty(channel, have)
            for _ in range(self.size - have):
                if stop.is_set() or self.telegram_wait() > 0:
                    return
                if not await self._mint_one(channel):
                    break
                await asyncio.sleep(self._pace)

    def _watch_empty(self, channel: Channel, have: int) -> None:
        if have or not self.size:
            self._empty_since.pop(channel.chat_id, None)
            return
        since = self._empty_since.setdefault(channel.chat_id, time.monotonic())
        if time.monotonic() - since >= EMPTY_ALERT_AFTER:
            self.on_empty(channel.chat_id, channel.title)

    async def _mint_one(self, channel: Channel) -> bool:
        try:
            created = await self._minter.create(channel)
        except TelegramRetryAfter as error:
            self._hold(error.retry_after)
            return False
        except TelegramBadRequest as error:
            log.error(
                "cannot mint invite links in %d: %s",
                channel.chat_id,
                error.message,
                extra=ids(chat_id=channel.chat_id),
            )
            return False
        except (TelegramAPIError, OSError, TimeoutError) as error:
            log.warning(
                "minting a pool link in %d failed: %s",
                channel.chat_id,
                error,
                extra=ids(chat_id=channel.chat_id),
            )
            return False
        await invite_pool.add(
            self._db,
            url=created.url,
            chat_id=channel.chat_id,
            name=created.name,
            creates_join_request=created.creates_join_request,
            expire_date=created.expire_date,
        )
        self.minted += 1
        return True

    async def _revoke_used(self, stop: asyncio.Event) -> None:
        for link_id, chat_id, url in await invite_pool.to_revoke(self._db, limit=100):
            if stop.is_set() or self.telegram_wait() > 0:
                return
            try:
                await self._bot.revoke_chat_invite_link(chat_id=chat_id, invite_link=url)
            except TelegramRetryAfter as error:
                self._hold(error.retry_after)
                return
            except TelegramBadRequest as error:
                # Already revoked or expired, or our rights are gone: nothing more to do.
                log.info(
                    "invite link %d not revoked (%s); marking it done",
                    link_id,
                    error.message,
                    extra=ids(link_id=link_id, chat_id=chat_id),
                )
            except (TelegramAPIError, OSError, TimeoutError) as error:
                log.warning(
                    "revoking invite link %d failed: %s; will retry",
                    link_id,
                    error,
                    extra=ids(link_id=link_id, chat_id=chat_id),
                )
                return
            await invite_pool.mark_revoked(self._db, link_id)
            self.revoked += 1
            log.info(
                "invite link %d revoked after its join",
                link_id,
                extra=ids(link_id=link_id, chat_id=chat_id),
            )
            await asyncio.sleep(self._pace)
