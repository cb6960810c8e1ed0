"""my_chat_member: the bot itself promoted, demoted or removed in a channel."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import ChatMemberAdministrator, ChatMemberOwner, ChatMemberUpdated

from bot.admin.onboarding import BotMembership
from handlers.filters import CHANNELS
from handlers.joins import chat_ref
from handlers.services import Services


async def on_bot_status(event: ChatMemberUpdated, services: Services) -> None:
    member = event.new_chat_member
    is_admin = isinstance(member, ChatMemberAdministrator | ChatMemberOwner)
    can_invite = isinstance(member, ChatMemberOwner) or (
        isinstance(member, ChatMemberAdministrator) and member.can_invite_users
    )
    await services.onboarding.bot_status_changed(
        BotMembership(
            chat=chat_ref(event.chat),
            is_admin=is_admin,
            can_invite_users=can_invite,
            changed_by=event.from_user.id if event.from_user else None,
        )
    )


def make_router() -> Router:
    router = Router(name="membership")
    router.my_chat_member.filter(CHANNELS)
    router.my_chat_member.register(on_bot_status)
    return router
