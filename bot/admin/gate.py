"""Who may use the admin commands, and for which channels.

ADMIN_IDS see everything. An admin of a tracked channel (as Telegram says, via
getChatMember, cached a few minutes) sees that channel only. Anyone else gets a
short refusal and no data. A chat_member update that shows someone becoming or
ceasing to be an admin (handlers/admin_status.py) drops the cached answer at
once, so a demoted admin loses access when Telegram tells us, not minutes later.
"""

from __future__ import annotations

import html
import logging
import time
from collections import OrderedDict

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from storage import channels
from storage.channels import Channel
from storage.db import Database

log = logging.getLogger(__name__)

ADMIN_STATUSES = frozenset({"creator", "administrator"})

# Answers kept at most: one per (user, tracked channel) asked within the TTL. A
# crowd of strangers each sending /stats cannot grow the cache past this.
CACHE_ENTRIES = 4096


class AdminGate:
    def __init__(
        self,
        bot: Bot,
        db: Database,
        admin_ids: tuple[int, ...],
        ttl: float = 300.0,
        max_entries: int = CACHE_ENTRIES,
    ):
        self._bot = bot
        self._db = db
        self.admin_ids = frozenset(admin_ids)
        self._ttl = ttl
        self._max_entries = max_entries
        # (user, chat) -> (is admin, when Telegram said so), oldest answer first:
        # every answer is (re)inserted at the end, so the front is what expires first.
        self._cache: OrderedDict[tuple[int, int], tuple[bool, float]] = OrderedDict()
        # Counts forget() calls: an answer asked for before a forget may predate
        # the change it was forgotten for, and is then used once but not kept.
        self._forgets = 0

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
        key = (user_id, chat_id)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        forgets = self._forgets
        try:
            member = await self._bot.get_chat_member(chat_id=chat_id, user_id=user_id)
            allowed = member.status in ADMIN_STATUSES
        except TelegramAPIError as error:
            log.info("getChatMember(%d, %d) failed: %s", chat_id, user_id, error)
            allowed = False
        if forgets == self._forgets:
            self._remember(key, allowed, time.monotonic())
        return allowed

    def forget(self, user_id: int, chat_id: int) -> None:
        """Drop the cached answer for this user in this chat: Telegram said their
        admin status changed, so the next command asks getChatMember again."""
        self._forgets += 1
        self._cache.pop((user_id, chat_id), None)

    def _remember(self, key: tuple[int, int], allowed: bool, now: float) -> None:
        self._cache.pop(key, None)
        self._cache[key] = (allowed, now)
        # Expired answers leave from the front; past the bound, the oldest go too.
        while self._cache:
            _, (_, at) = next(iter(self._cache.items()))
            if now - at < self._ttl and len(self._cache) <= self._max_entries:
                break
            self._cache.popitem(last=False)


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
