"""chat_member updates in tracked channels: joins and leaves.

The handlers only read the update; they return plain data that the poller
persists for the whole getUpdates batch in one transaction. Keep them so: a
small batch of chat_member updates is handled before it is stored (see
bot/polling/batches.py), and may be handled a second time.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import JOIN_TRANSITION, LEAVE_TRANSITION, ChatMemberUpdatedFilter
from aiogram.types import Chat, ChatMemberUpdated, Update

from bot.joins.recorder import ChatRef, JoinSeen, LeaveSeen
from handlers.filters import CHANNELS, PEOPLE


def chat_ref(chat: Chat) -> ChatRef:
    return ChatRef(id=chat.id, title=chat.title or "", username=chat.username, type=chat.type)


async def on_join(event: ChatMemberUpdated, event_update: Update) -> JoinSeen:
    return JoinSeen(
        chat=chat_ref(event.chat),
        user_id=event.new_chat_member.user.id,
        link_url=event.invite_link.invite_link if event.invite_link else None,
        joined_at=int(event.date.timestamp()),
        via_join_request=bool(event.via_join_request),
        update_id=event_update.update_id,
    )


async def on_leave(event: ChatMemberUpdated, event_update: Update) -> LeaveSeen:
    return LeaveSeen(
        chat=chat_ref(event.chat),
        user_id=event.old_chat_member.user.id,
        left_at=int(event.date.timestamp()),
        update_id=event_update.update_id,
    )


def make_router() -> Router:
    # A fresh router per dispatcher: aiogram attaches a router to one parent only.
    router = Router(name="joins")
    router.chat_member.filter(CHANNELS, PEOPLE)
    router.chat_member.register(on_join, ChatMemberUpdatedFilter(JOIN_TRANSITION))
    router.chat_member.register(on_leave, ChatMemberUpdatedFilter(LEAVE_TRANSITION))
    return router
