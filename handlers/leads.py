"""/lead, /fire and /value in private chat. Thin: read the command, ask the
/lead command's logic, send its reply."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from handlers.filters import PRIVATE
from handlers.services import Services


def _args(command: CommandObject) -> list[str]:
    return (command.args or "").split()


async def _answer(message: Message, text: str) -> None:
    await message.answer(text, parse_mode="HTML", disable_web_page_preview=True)


async def on_lead(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    reply = await services.lead_command.lead(message.from_user.id, _args(command))
    await _answer(message, reply.text)


async def on_fire(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    reply = await services.lead_command.fire(message.from_user.id, _args(command))
    await _answer(message, reply.text)


async def on_value(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    reply = await services.lead_command.value(message.from_user.id, _args(command))
    await _answer(message, reply.text)


def make_router() -> Router:
    router = Router(name="leads")
    router.message.filter(PRIVATE)
    router.message.register(on_lead, Command("lead"))
    router.message.register(on_fire, Command("fire"))
    router.message.register(on_value, Command("value"))
    return router
