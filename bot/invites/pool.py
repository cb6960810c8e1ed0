"""Invite pools: links minted ahead of demand, so a landing page never waits on
Telegram's rate limit for link creation.

A background loop keeps `size` usable links per tracked channel (in the
channel's mode), replaces links near expiry, and revokes personal links once
their visitor has joined (member_limit counts members present at once, so a
leave would free the slot for someone else).

One client (the tracker's rate-limit key) gets at most `per_client` personal
links per channel an hour, counted in the database (it survives a restart); a
visitor who cannot have a personal link, past that quota or with the pool empty
while Telegram says wait, gets the channel's fallback link: a campaign link the
loop mints for each channel ahead of need and checks now and then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter

from bot.invites.minter import InviteMinter
from bot.logs import ids
from bot.waiting import wait_any
from storage import channels, invite_links, invite_pool, visits
from storage.channels import Channel
from storage.db import Database, Transaction
from storage.invite_links import InviteLink
from storage.visits import Attribution

log = logging.getLogger(__name__)

# A link handed to a visitor who has not joined yet stays theirs while it has
# at least this long to live.
REUSE_MIN_LIFE = 60.0
IDLE_WAIT = 60.0
EMPTY_ALERT_AFTER = 300.0
# The quota's window: personal links handed to one client in the last hour.
QUOTA_WINDOW = 3600.0
# How often the links' clients past the window are cleared (a scan of the last
# hour's links, so not on every pass).
FORGET_CLIENTS_EVERY = 300.0
# How often a kept fallback link is checked with Telegram; also once per channel
# after a start and whenever the bot is back as its admin.
FALLBACK_CHECK_EVERY = 3600.0


# Seconds a visitor is asked to wait when not even the fallback link can be had
# and Telegram gave no time of its own.
FALLBACK_RETRY_AFTER = 5.0


class PoolEmpty(Exception):
    """No personal link and no fallback link, and Telegram says wait before
    creating another."""

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
        self,
        bot: Bot,
        minter: InviteMinter,
        db: Database,
        *,
        size: int,
        per_client: int,
        pace: float = 0.05,
        on_empty: Callable[[int, str], None] = lambda chat_id, title: None,
    ) -> None:
        self._bot = bot
        self._minter = minter
        self._db = db
        self.size = size
        self.per_client = per_client  # personal links per client, channel and hour
        self._pace = pace
        self._wake = asyncio.Event()
        self._telegram_wait_until = 0.0  # monotonic
        self._mint_locks: dict[int, asyncio.Lock] = {}
        self._empty_since: dict[int, float] = {}
        # (chat id, join-request mode) -> when its fallback link is next to be
        # checked (monotonic); absent: at once.
        self._fallback_due_at: dict[tuple[int, bool], float] = {}
        self._clients_forgotten = 0.0  # monotonic
        # Told (chat id, title) when a pool has stayed empty for EMPTY_ALERT_AFTER.
        self._on_empty = on_empty
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

    async def invite_for(
        self, channel: Channel, visit: Attribution, *, client_key: str
    ) -> InviteLink:
        """The visitor's link in this channel: the one already given, a pool link,
        or, with the pool empty, one minted now; past `client_key`'s quota, or
        with no personal link to be had, the channel's fallback link
        (`link.fallback`). PoolEmpty when not even that exists."""
        now = time.time()
        request_mode = channel.mode == "request"
        async with self._db.transaction() as tx:
            visit_id = await visits.ensure(tx, visit)
            link = await invite_pool.find_assigned(
                tx, visit_id=visit_id, chat_id=channel.chat_id, usable_after=now + REUSE_MIN_LIFE
            )
            if link is not None and link.creates_join_request == request_mode:
                return link  # the visitor's own: no quota spent
            # Counted and taken in one statement: a crowd from one client cannot
            # all pass the count before any of them took a link.
            link = await invite_pool.take(
                tx,
                chat_id=channel.chat_id,
                creates_join_request=request_mode,
                visit_id=visit_id,
                client_key=client_key,
                quota=(self.per_client, now - QUOTA_WINDOW),
                usable_after=now + self.min_life,
            )
            over_quota = link is None and await self._over_quota(tx, channel, client_key)
            if over_quota:
                link = await invite_links.find_fallback(
                    tx, chat_id=channel.chat_id, creates_join_request=request_mode
                )
        if not over_quota:
            self._wake.set()  # a link was taken, or there was none: refill
        if link is not None:
            return link
        if not over_quota:
            # One on-demand mint at a time per channel: a crowd arriving at an empty
            # pool must not turn into a crowd of createChatInviteLink calls.
            async with self._mint_locks.setdefault(channel.chat_id, asyncio.Lock()):
                # Counted again: the client's other requests may have minted
                # while this one waited for the lock.
                async with self._db.read() as tx:
                    over_quota = await self._over_quota(tx, channel, client_key)
                if not over_quota and self.telegram_wait() <= 0:
                    log.warning(
                        "invite pool of %d is empty: minting on demand",
                        channel.chat_id,
                        extra=ids(chat_id=channel.chat_id),
                    )
                    try:
                        return await self._minter.mint_for_visitor(
                            channel.chat_id, visit, record_visit=False, client_key=client_key
                        )
                    except TelegramRetryAfter as error:
                        self._hold(error.retry_after)
                    except (TelegramAPIError, OSError, TimeoutError) as error:
                        # The visitor still gets into the channel, by the fallback link.
                        _telegram_failed("minting an invite link on demand", channel.chat_id, error)
        return await self.fallback(channel)

    async def _over_quota(self, tx: Transaction, channel: Channel, client_key: str) -> bool:
        handed = await invite_pool.handed_to(
            tx, chat_id=channel.chat_id, client_key=client_key, since=time.time() - QUOTA_WINDOW
        )
        return handed >= self.per_client

    async def fallback(self, channel: Channel) -> InviteLink:
        """The channel's fallback link; minted now if none is kept and Telegram
        allows it, else PoolEmpty. Also what onboarding puts in the snippet."""
        kept = await self._minter.kept_fallback(channel)
        if kept is not None:
            return kept
        if self.telegram_wait() > 0:
            raise PoolEmpty(self.telegram_wait())
        try:
            return await self._minter.fallback(channel)
        except TelegramRetryAfter as error:
            self._hold(error.retry_after)
            raise PoolEmpty(float(error.retry_after)) from None
        except (TelegramAPIError, OSError, TimeoutError) as error:
            # Telegram unreachable or refusing: a 503 the landing page can retry,
            # not a 500.
            _telegram_failed("minting the fallback link", channel.chat_id, error)
            raise PoolEmpty(FALLBACK_RETRY_AFTER) from None

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
                await self._forget_clients()
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
        serving = []
        for channel in await channels.list_all(self._db):
            if channel.active and channel.can_invite_users:
                serving.append(channel)
            else:
                # Checked again when the bot is back: its links may not have survived.
                for mode in (False, True):
                    self._fallback_due_at.pop((channel.chat_id, mode), None)
        # The pass runs after every invite: the fallback links are read only when
        # one is due (missing, or its hourly check).
        due = [c for c in serving if self._fallback_due(c)]
        fallbacks = await invite_links.fallbacks(self._db) if due else {}
        for channel in serving:
            request_mode = channel.mode == "request"
            have = sizes.get((channel.chat_id, request_mode), 0)
            self._watch_empty(channel, have)
            # The fallback link first: it is what serves everyone while the pool
            # cannot, so it must exist before Telegram says wait.
            if stop.is_set() or self.telegram_wait() > 0:
                return
            if channel in due:
                await self._keep_fallback(channel, fallbacks.get((channel.chat_id, request_mode)))
            for _ in range(self.size - have):
                if stop.is_set() or self.telegram_wait() > 0:
                    return
                if not await self._mint_one(channel):
                    break
                await asyncio.sleep(self._pace)

    def _fallback_due(self, channel: Channel) -> bool:
        key = (channel.chat_id, channel.mode == "request")
        return time.monotonic() >= self._fallback_due_at.get(key, 0.0)

    async def _keep_fallback(self, channel: Channel, kept: InviteLink | None) -> None:
        """Mint the channel's fallback link if it has none; check a kept one with
        Telegram (due hourly), and replace it if it no longer works."""
        key = (channel.chat_id, channel.mode == "request")
        # Until it succeeds, tried again after a pause (or Telegram's wait), not on
        # every pass: the pass runs after every invite.
        self._fallback_due_at[key] = time.monotonic() + IDLE_WAIT
        try:
            if kept is not None and await self._minter.fallback_works(channel, kept):
                self._fallback_due_at[key] = time.monotonic() + FALLBACK_CHECK_EVERY
                return
            link = await self._minter.fallback(channel)
        except TelegramRetryAfter as error:
            self._hold(error.retry_after)
            self._fallback_due_at.pop(key)  # first thing once the wait is over
            return
        except (TelegramAPIError, OSError, TimeoutError) as error:
            _telegram_failed("keeping the fallback link", channel.chat_id, error)
            return
        self._fallback_due_at[key] = time.monotonic() + FALLBACK_CHECK_EVERY
        log.info(
            "fallback link %d of %d ready",
            link.id,
            channel.chat_id,
            extra=ids(link_id=link.id, chat_id=channel.chat_id),
        )

    async def _forget_clients(self) -> None:
        if time.monotonic() - self._clients_forgotten < FORGET_CLIENTS_EVERY:
            return
        self._clients_forgotten = time.monotonic()
        await invite_pool.forget_clients(self._db, before=time.time() - QUOTA_WINDOW)

    def _watch_empty(self, channel: Channel, have: int) -> None:
        if have or not self.size:
            self._empty_since.pop(channel.chat_id, None)
            return
        since = self._empty_since.setdefault(channel.chat_id, time.monotonic())
        if time.monotonic() - since >= EMPTY_ALERT_AFTER:
            self._on_empty(channel.chat_id, channel.title)

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
            _telegram_failed("minting a pool link", channel.chat_id, error)
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


def _telegram_failed(what: str, chat_id: int, error: BaseException) -> None:
    log.warning("%s in %d failed: %s", what, chat_id, error, extra=ids(chat_id=chat_id))
