"""Admin commands in private chat, and the /stats buttons.

Thin: read the command, ask the command's logic, send its reply.

A button press is answered even when it cannot be served: its data may be forged
or from an old message, and an update that raises is kept and retried, again and
again, for something no retry can fix.
"""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import BufferedInputFile, CallbackQuery, Message

from bot.admin.commands import HELP, STATS_BUTTON_PREFIX, Reply, parse_stats_button
from handlers.filters import PRIVATE, CallbackData
from handlers.services import Services

log = logging.getLogger(__name__)

OUT_OF_DATE = "This button is out of date."


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


async def on_start(message: Message, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.start(message.from_user.id))


async def on_stats(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.stats(message.from_user.id, _args(command)))


async def on_chart(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    answer = await services.chart_command.chart(message.from_user.id, _args(command))
    if isinstance(answer, Reply):
        await _send(message, answer)
        return
    photo = BufferedInputFile(answer.png, filename="joins.png")
    await message.answer_photo(photo, caption=answer.caption, parse_mode="HTML")


async def on_channels(message: Message, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.list_channels(message.from_user.id))


async def on_event(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.set_event(message.from_user.id, _args(command)))


async def on_mode(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.set_mode(message.from_user.id, _args(command)))


async def on_link(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    await _send(
        message, await services.commands.campaign_link(message.from_user.id, _args(command))
    )


async def on_links(message: Message, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.list_links(message.from_user.id))


async def on_outbox(message: Message, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.outbox_status(message.from_user.id))


async def on_retry(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.retry(message.from_user.id, _args(command)))


async def on_pause(message: Message, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.pause(message.from_user.id, _who(message)))


async def on_resume(message: Message, services: Services) -> None:
    assert message.from_user is not None
    await _send(message, await services.commands.resume(message.from_user.id, _who(message)))


async def on_sync(message: Message, services: Services) -> None:
    assert message.from_user is not None
    # Bridge-wide: it rewrites every channel's AdTarget mapping and spends the key's
    # rate limit, so it is not for one channel's admins.
    if (refusal := await services.commands.owners_only(message.from_user.id)) is not None:
        await _send(message, refusal)
        return
    await message.answer(await services.channel_sync.run_and_describe(), parse_mode="HTML")


async def on_track(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None
    await _send(
        message, Reply(await services.onboarding.track(message.from_user.id, command.args or ""))
    )


async def on_stats_button(query: CallbackQuery, services: Services) -> None:
    """`st:<chat id|all>:<period>`: edit the same message in place."""
    wanted = parse_stats_button(query.data or "")
    if wanted is None:
        await _out_of_date(query, f"its data {query.data!r} is none of ours")
        return
    reply = await services.commands.stats_view(query.from_user.id, *wanted)
    if isinstance(query.message, Message):
        try:
            await query.message.edit_text(reply.text, parse_mode="HTML", reply_markup=reply.buttons)
        except TelegramBadRequest as error:
            # The screen shown already (a press on the marked button), or a message
            # that can no longer be edited: asking again would get the same 400.
            if "message is not modified" not in error.message:
                await _out_of_date(query, f"editing its message failed: {error.message}")
                return
    await _answer(query)


async def on_other_message(message: Message, services: Services) -> None:
    """A private message no handler took: an unknown command, plain text, a sticker.
    Silence would look like a dead bot; a stranger gets the usual refusal."""
    assert message.from_user is not None
    await _send(
        message, await services.commands.unknown_message(message.from_user.id, message.text)
    )


async def on_other_button(query: CallbackQuery) -> None:
    """Any button no handler before this one took: not one this bridge makes now."""
    await _out_of_date(query, f"its data {query.data!r} is none of ours")


async def _out_of_date(query: CallbackQuery, why: str) -> None:
    log.info("a button press by user %d is not served: %s", query.from_user.id, why)
    await _answer(query, OUT_OF_DATE)


async def _answer(query: CallbackQuery, text: str | None = None) -> None:
    """answerCallbackQuery; a 400 (a query too old to answer, as one retried after
    a failure is) is logged, not raised: it would fail the same way every time."""
    try:
        await query.answer(text)
    except TelegramBadRequest as error:
        log.info("answering button press %s failed: %s", query.id, error.message)


def make_router() -> Router:
    router = Router(name="admin")
    router.message.filter(PRIVATE)
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_stats, Command("stats"))
    router.message.register(on_chart, Command("chart"))
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
    router.callback_query.register(on_stats_button, CallbackData(STATS_BUTTON_PREFIX))
    # Last, in the last router (handlers/__init__.py): whatever no handler took.
    router.message.register(on_other_message)
    router.callback_query.register(on_other_button)
    return router
