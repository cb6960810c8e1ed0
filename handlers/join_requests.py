"""chat_join_request: someone asked to join through a join-request link."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import ChatJoinRequest, Update

from bot.joins.requests import JoinRequestSeen
from handlers.filters import CHANNELS
from handlers.joins import chat_ref


async def on_join_request(event: ChatJoinRequest, event_update: Update) -> JoinRequestSeen:
    return JoinRequestSeen(
        chat=chat_ref(event.chat),
        user_id=event.from_user.id,
        link_url=event.invite_link.invite_link if event.invite_link else None,
        requested_at=int(event.date.timestamp()),
        update_id=event_update.update_id,
    )


def make_router() -> Router:
    router = Router(name="join_requests")
    router.chat_join_request.filter(CHANNELS)
    router.chat_join_request.register(on_join_request)
    return router
