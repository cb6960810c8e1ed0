"""Who may use the admin commands, and for which channels.

ADMIN_IDS see everything. An admin of a tracked channel (as Telegram says, via
getChatMember, cached a few minutes) sees that channel only. Anyone else gets a
short refusal and no data.
"""

from __future__ import annotations

import html
import logging
import time

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from storage import channels
from storage.channels import Channel
from storage.db import Database

log = logging.getLogger(__name__)

ADMIN_STATUSES = {"creator", "administrator"}


class AdminGate:
    def __init__(self, bot: Bot, db: Database, admin_ids: tuple[int, ...], ttl: float = 300.0):
        self._bot = bot
        self._db = db
        self.admin_ids = frozenset(admin_ids)
        self._ttl = ttl
        self._cache: dict[tuple[int, int], tuple[bool, float]] = {}

    def is_owner(self, user_id: int) -> bool:
        """One of ADMIN_IDS: may use the bridge-wide commands (/outbox, /pause, ...)."""
        return user_id in self.admin_ids

    async def channels_for(self, user_id: int) -> list[Channel]:
        """The tracked channels this user may see and change (empty: none)."""
        every = await channels.list_all(self._db)
        if self.is_owner(user_id):
            return every
        return [c for c in every if await self.is_channel_admin(user_id, c.chat_id)]

    async def is_channel_admin(self, user_id: int, chat_id: int) -> bool:
        now = time.monotonic()
        cached = self._cache.get((user_id, chat_id))
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        try:
            member = await self._bot.get_chat_member(chat_id=chat_id, user_id=user_id)
            allowed = member.status in ADMIN_STATUSES
        except TelegramAPIError as error:
            log.info("getChatMember(%d, %d) failed: %s", chat_id, user_id, error)
            allowed = False
        self._cache[(user_id, chat_id)] = (allowed, now)
        return allowed


def pick_channel(text: str, allowed: list[Channel]) -> Channel | str:
    """A channel by @username, -100… id or title prefix, among `allowed`; else a
    message saying what matched and what the choices are."""
    wanted = text.strip()
    folded = wanted.casefold()
    if wanted.startswith("@"):
        found = [c for c in allowed if c.username and c.username.casefold() == folded[1:]]
    elif wanted.lstrip("-").isdigit():
        found = [c for c in allowed if str(c.chat_id) == wanted]
    else:
        found = [c for c in allowed if c.title.casefold() == folded]
        found = found or [c for c in allowed if c.title.casefold().startswith(folded)]
    if len(found) == 1:
        return found[0]
    choices = "\n".join(f"• {describe(c)}" for c in (found or allowed)) or "(none yet)"
    if found:
        return f"“{html.escape(wanted)}” matches several channels:\n{choices}"
    return f"No channel “{html.escape(wanted)}” among yours. Choose one of:\n{choices}"


def describe(channel: Channel) -> str:
    """`Title (@handle)`, HTML-escaped: titles are anyone's text."""
    handle = f"@{channel.username}" if channel.username else str(channel.chat_id)
    return html.escape(f"{channel.title} ({handle})")
