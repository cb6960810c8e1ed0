"""/stay in private chat. Thin: read the command, ask the service, send its reply."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from handlers.filters import PRIVATE
from handlers.services import Services


async def on_stay(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    reply = await services.stay_command.stay(message.from_user.id, (command.args or "").split())
    await message.answer(
        reply.text, parse_mode="HTML", reply_markup=reply.buttons, disable_web_page_preview=True
    )


def make_router() -> Router:
    router = Router(name="stay")
    router.message.filter(PRIVATE)
    router.message.register(on_stay, Command("stay"))
    return router
