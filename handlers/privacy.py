"""`/forget <telegram-user-id>` in private chat, for ADMIN_IDS.

Thin: read the command, ask the forget command, send its reply.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from handlers.filters import PRIVATE
from handlers.services import Services


async def on_forget(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    reply = await services.forget_command.forget(message.from_user.id, (command.args or "").split())
    await message.answer(reply, parse_mode="HTML")


def make_router() -> Router:
    router = Router(name="privacy")
    router.message.filter(PRIVATE)
    router.message.register(on_forget, Command("forget"))
    return router
