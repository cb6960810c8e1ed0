"""Minting invite links with our own bot.

Only links the bot created come back whole in Telegram's join updates, which is
what lets a join be matched to the visitor it was minted for.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest

from bot.logs import ids
from storage import channels, invite_links, invite_pool, visits
from storage.channels import Channel
from storage.db import Database
from storage.invite_links import FALLBACK_CAMPAIGN, InviteLink
from storage.visits import Attribution

log = logging.getLogger(__name__)

LINK_NAME_PREFIX = "jb-"


class ChannelNotTracked(LookupError):
    """The chat is unknown, or the bot is no longer its admin."""


@dataclass(frozen=True, slots=True)
class CreatedLink:
    url: str
    name: str
    expire_date: int
    creates_join_request: bool


def link_name() -> str:
    """A short name carrying a random token: visible to admins in Telegram's link
    list, and well inside Telegram's 32-character limit."""
    return LINK_NAME_PREFIX + secrets.token_urlsafe(9)


class InviteMinter:
    def __init__(self, bot: Bot, db: Database, *, ttl: int) -> None:
        self._bot = bot
        self._db = db
        self.ttl = ttl
        # One fallback mint at a time per channel: refused visitors arrive in crowds.
        self._fallback_locks: dict[int, asyncio.Lock] = {}

    async def create(self, channel: Channel) -> CreatedLink:
        """createChatInviteLink: single-use, or a join-request link by the channel's mode.

        Telegram errors (429 with retry_after included) propagate to the caller.
        """
        request_mode = channel.mode == "request"
        name = link_name()
        expire_date = int(time.time()) + self.ttl
        # Telegram forbids member_limit together with creates_join_request.
        created = await self._bot.create_chat_invite_link(
            chat_id=channel.chat_id,
            name=name,
            expire_date=expire_date,
            member_limit=None if request_mode else 1,
            creates_join_request=True if request_mode else None,
        )
        return CreatedLink(created.invite_link, name, expire_date, request_mode)

    async def mint_for_visitor(
        self,
        chat_id: int,
        visit: Attribution,
        *,
        record_visit: bool = True,
        client_key: str | None = None,
    ) -> InviteLink:
        """Create a link now and store it with the visitor's attribution.

        With `record_visit` false a known visitor's stored attribution is kept
        as it is (the invite call's own IP and User-Agent only fill in for a
        visitor never seen). `client_key`: the client it is handed to, whose
        quota it counts against."""
        channel = await channels.get(self._db, chat_id)
        if channel is None or not channel.active:
            raise ChannelNotTracked(chat_id)
        created = await self.create(channel)
        async with self._db.transaction() as tx:
            visit_id = await (visits.upsert if record_visit else visits.ensure)(tx, visit)
            link = await invite_links.insert(
                tx,
                url=created.url,
                chat_id=chat_id,
                kind="visitor",
                name=created.name,
                visit_id=visit_id,
                campaign=None,
                creates_join_request=created.creates_join_request,
                expire_date=created.expire_date,
                client_key=client_key,
            )
        log.info("invite link %d minted in %d for visit %d", link.id, chat_id, visit_id)
        return link

    async def mint_campaign(self, channel: Channel, campaign: str) -> InviteLink:
        """A named link for a post, a partner or a QR code: many members, no expiry;
        joins through it are reported with the campaign, without visit signals.

        The reserved name FALLBACK_CAMPAIGN gives the channel's fallback link (the
        kept one, else a new one): one link under that name, so /stats' fallback
        line means one thing."""
        if campaign == FALLBACK_CAMPAIGN:
            return await self.fallback(channel)
        return await self._mint_campaign(channel, campaign)

    async def kept_fallback(self, channel: Channel) -> InviteLink | None:
        """The channel's live fallback link for its mode, if one was minted."""
        async with self._db.read() as tx:
            return await invite_links.find_fallback(
                tx, chat_id=channel.chat_id, creates_join_request=channel.mode == "request"
            )

    async def fallback(self, channel: Channel) -> InviteLink:
        """The channel's fallback link: the kept one, else minted now (a campaign link
        under the reserved name). Telegram errors propagate."""
        async with self._fallback_locks.setdefault(channel.chat_id, asyncio.Lock()):
            kept = await self.kept_fallback(channel)
            if kept is not None:
                return kept
            return await self._mint_campaign(channel, FALLBACK_CAMPAIGN)

    async def fallback_works(self, channel: Channel, link: InviteLink) -> bool:
        """Ask Telegram whether a kept fallback link still works; one that does not
        (revoked, expired) is marked revoked, so the next `fallback` mints anew.

        editChatInviteLink with the options it was created with answers the link's
        state (the Bot API has no read-only call for one link); Telegram resets
        omitted options, so an expiry someone added is dropped on the way. Other
        Telegram errors (429 included) propagate: nothing is concluded from them."""
        request_mode = channel.mode == "request"
        try:
            state = await self._bot.edit_chat_invite_link(
                chat_id=channel.chat_id,
                invite_link=link.url,
                name=link.name,
                creates_join_request=True if request_mode else None,
            )
            works = not state.is_revoked and (
                state.expire_date is None or state.expire_date.timestamp() > time.time()
            )
            reason = "revoked" if state.is_revoked else "expired"
        except TelegramBadRequest as error:
            # INVITE_HASH_EXPIRED and the like: Telegram no longer knows it as ours.
            works, reason = False, error.message
        if not works:
            await invite_pool.mark_revoked(self._db, link.id)
            log.warning(
                "fallback link %d of %d no longer works (%s); minting another",
                link.id,
                channel.chat_id,
                reason,
                extra=ids(link_id=link.id, chat_id=channel.chat_id),
            )
        return works

    async def _mint_campaign(self, channel: Channel, campaign: str) -> InviteLink:
        request_mode = channel.mode == "request"
        name = f"jb-c {campaign}"[:32]
        created = await self._bot.create_chat_invite_link(
            chat_id=channel.chat_id,
            name=name,
            creates_join_request=True if request_mode else None,
        )
        async with self._db.transaction() as tx:
            link = await invite_links.insert(
                tx,
                url=created.invite_link,
                chat_id=channel.chat_id,
                kind="campaign",
                name=name,
                visit_id=None,
                campaign=campaign,
                creates_join_request=request_mode,
                expire_date=None,
            )
        log.info("campaign link %d (%s) minted in %d", link.id, campaign, channel.chat_id)
        return link
