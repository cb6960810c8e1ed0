"""The bot's own membership in channels: registered when made admin, inactive when not."""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.joins import ChatRef
from storage import channels
from storage.db import Database

log = logging.getLogger(__name__)


class Onboarding:
    def __init__(self, db: Database, on_change: Callable[[], None] = lambda: None) -> None:
        self._db = db
        # The invite pool listens: a newly tracked channel needs its pool filled.
        self._on_change = on_change

    async def bot_status_changed(
        self, chat: ChatRef, *, is_admin: bool, can_invite_users: bool
    ) -> None:
        async with self._db.transaction() as conn:
            await channels.upsert(
                conn,
                chat.id,
                title=chat.title,
                username=chat.username,
                chat_type=chat.type,
                active=is_admin,
                can_invite_users=can_invite_users,
            )
        self._on_change()
        if not is_admin:
            log.warning("bot is no longer admin of %d (%s): channel inactive", chat.id, chat.title)
        elif not can_invite_users:
            log.warning(
                "bot is admin of %d (%s) without the right to invite users: no links can be"
                " minted until it is granted",
                chat.id,
                chat.title,
            )
        else:
            log.info("channel %d (%s) tracked", chat.id, chat.title)
