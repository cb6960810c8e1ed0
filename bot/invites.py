"""Minting invite links with our own bot.

Only links the bot created come back whole in Telegram's join updates, which is
what lets a join be matched to the visitor it was minted for.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from aiogram import Bot

from storage import channels, invite_links, visits
from storage.channels import Channel
from storage.db import Database
from storage.invite_links import InviteLink
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
        self, chat_id: int, visit: Attribution, *, record_visit: bool = True
    ) -> InviteLink:
        """Create a link now and store it with the visitor's attribution.

        With `record_visit` false a known visitor's stored attribution is kept
        as it is (the invite call's own IP and User-Agent only fill in for a
        visitor never seen)."""
        channel = await channels.get(self._db, chat_id)
        if channel is None or not channel.active:
            raise ChannelNotTracked(chat_id)
        created = await self.create(channel)
        async with self._db.transaction() as conn:
            visit_id = await (visits.upsert if record_visit else visits.ensure)(conn, visit)
            link = await invite_links.insert(
                conn,
                url=created.url,
                chat_id=chat_id,
                kind="visitor",
                name=created.name,
                visit_id=visit_id,
                campaign=None,
                creates_join_request=created.creates_join_request,
                expire_date=created.expire_date,
            )
        log.info("invite link %d minted in %d for visit %d", link.id, chat_id, visit_id)
        return link

    async def mint_campaign(self, channel: Channel, campaign: str) -> InviteLink:
        """A named link for a post, a partner or a QR code: many members, no expiry;
        joins through it are reported with the campaign, without visit signals."""
        request_mode = channel.mode == "request"
        name = f"jb-c {campaign}"[:32]
        created = await self._bot.create_chat_invite_link(
            chat_id=channel.chat_id,
            name=name,
            creates_join_request=True if request_mode else None,
        )
        async with self._db.transaction() as conn:
            link = await invite_links.insert(
                conn,
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
