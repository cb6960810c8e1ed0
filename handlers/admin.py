"""Admin commands in private chat, and the /stats buttons.

Thin: read the command, ask the console, send its reply.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import CallbackQuery, Message

from bot.console import HELP, Console, Reply
from bot.onboarding import Onboarding
from bot.sync import ChannelSync
from handlers.filters import PRIVATE, CallbackData


def _args(command: CommandObject) -> list[str]:
    return (command.args or "").split()


def _who(message: Message | CallbackQuery) -> str:
    user = message.from_user
    if user is None:
        return "unknown"
    return f"@{user.username}" if user.username else f"user {user.id}"


async def _send(message: Message, reply: Reply) -> None:
    await message.answer(
        reply.text, parse_mode="HTML", reply_markup=reply.buttons, disable_web_page_preview=True
    )


async def on_help(message: Message) -> None:
    await message.answer(HELP, parse_mode="HTML")


async def on_stats(message: Message, command: CommandObject, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.stats(message.from_user.id, _args(command)))


async def on_channels(message: Message, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.list_channels(message.from_user.id))


async def on_event(message: Message, command: CommandObject, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.set_event(message.from_user.id, _args(command)))


async def on_mode(message: Message, command: CommandObject, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.set_mode(message.from_user.id, _args(command)))


async def on_link(message: Message, command: CommandObject, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.campaign_link(message.from_user.id, _args(command)))


async def on_links(message: Message, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.list_links(message.from_user.id))


async def on_outbox(message: Message, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.outbox_status(message.from_user.id))


async def on_retry(message: Message, command: CommandObject, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.retry(message.from_user.id, _args(command)))


async def on_pause(message: Message, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.pause(message.from_user.id, _who(message)))


async def on_resume(message: Message, console: Console) -> None:
    assert message.from_user is not None
    await _send(message, await console.resume(message.from_user.id, _who(message)))


async def on_sync(message: Message, console: Console, channel_sync: ChannelSync) -> None:
    assert message.from_user is not None
    if await console.allowed(message.from_user.id) is None:
        await message.answer("Sorry, this bot only answers the admins of the channels it tracks.")
        return
    await message.answer(await channel_sync.run_and_describe(), parse_mode="HTML")


async def on_track(message: Message, command: CommandObject, onboarding: Onboarding) -> None:
    assert message.from_user is not None
    await _send(message, Reply(await onboarding.track(message.from_user.id, command.args or "")))


async def on_stats_button(query: CallbackQuery, console: Console) -> None:
    """`st:<chat id|all>:<period>`: edit the same message in place."""
    _, scope, period = (query.data or "st::").split(":", 2)
    chat_id = None if scope == "all" else int(scope)
    reply = await console.stats_view(query.from_user.id, chat_id, period)
    if isinstance(query.message, Message):
        await query.message.edit_text(reply.text, parse_mode="HTML", reply_markup=reply.buttons)
    await query.answer()


def make_router() -> Router:
    router = Router(name="admin")
    router.message.filter(PRIVATE)
    router.message.register(on_help, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_stats, Command("stats"))
    router.message.register(on_channels, Command("channels"))
    router.message.register(on_track, Command("track"))
    router.message.register(on_event, Command("event"))
    router.message.register(on_mode, Command("mode"))
    router.message.register(on_link, Command("link"))
    router.message.register(on_links, Command("links"))
    router.message.register(on_outbox, Command("outbox"))
    router.message.register(on_retry, Command("retry"))
    router.message.register(on_pause, Command("pause"))
    router.message.register(on_resume, Command("resume"))
    router.message.register(on_sync, Command("sync"))
    router.callback_query.register(on_stats_button, CallbackData("st:"))
    return router
