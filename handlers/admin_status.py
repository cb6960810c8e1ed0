"""chat_member updates that make someone an admin of a channel, or stop them being one.

The admin commands trust getChatMember's answer for a few minutes (bot/admin/gate.py).
When Telegram reports that a person's admin status changed, that answer is
dropped at once: a demoted admin is refused from the next command on, a promoted
one is let in.

The update then goes on to the other routers (SkipHandler), because the same
change can also be a join or a leave (an admin who leaves, or someone added as
an admin straight away), which handlers/joins.py records. Like those handlers,
this one calls nothing and may run twice (bot/polling/batches.py handles small
chat_member batches before storing them): forgetting a cached answer is all it
does, and forgetting twice is the same as once.
"""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.dispatcher.event.bases import SkipHandler
from aiogram.filters import Filter
from aiogram.types import ChatMemberUpdated, TelegramObject

from bot.admin.gate import ADMIN_STATUSES
from bot.logs import ids
from handlers.filters import CHANNELS
from handlers.services import Services

log = logging.getLogger(__name__)


class AdminStatusChanged(Filter):
    """The member was an admin (creator or administrator) and is not any more, or
    the other way round. Rights edits of an admin who stays one are not changes;
    any status Telegram may add later counts as not an admin."""

    async def __call__(self, event: TelegramObject) -> bool:
        if not isinstance(event, ChatMemberUpdated):
            return False
        was_admin = event.old_chat_member.status in ADMIN_STATUSES
        return was_admin != (event.new_chat_member.status in ADMIN_STATUSES)


async def on_admin_status_changed(event: ChatMemberUpdated, services: Services) -> None:
    user_id = event.new_chat_member.user.id
    services.gate.forget(user_id, event.chat.id)
    now_admin = event.new_chat_member.status in ADMIN_STATUSES
    log.info(
        "user %d %s in chat %d; their access to the admin commands is checked again",
        user_id,
        "became an admin" if now_admin else "is no longer an admin",
        event.chat.id,
        extra=ids(user_id=user_id, chat_id=event.chat.id),
    )
    raise SkipHandler  # the joins router may still see a join or a leave in it


def make_router() -> Router:
    router = Router(name="admin-status")
    router.chat_member.filter(CHANNELS)
    router.chat_member.register(on_admin_status_changed, AdminStatusChanged())
    return router
