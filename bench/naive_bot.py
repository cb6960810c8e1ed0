"""The baseline: the bot most people would write first (measured, never deployed).

aiogram's default polling (`handle_as_tasks=True`: the batch is confirmed
before handlers finish) and an httpx POST to AdTarget inside the chat_member
handler. No outbox, no retries, no idempotency: a crash or an AdTarget outage
loses joins. Configured from the same environment variables as the bridge.

    python -m bench.naive_bot
"""

from __future__ import annotations

import asyncio
import os

import httpx
from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import JOIN_TRANSITION, ChatMemberUpdatedFilter
from aiogram.types import ChatMemberUpdated


def main() -> None:
    api_url = os.environ["ADTARGET_API_URL"].rstrip("/") + "/api/v1/events/conversion"
    key = os.environ["ADTARGET_API_KEY"]
    session = AiohttpSession(api=TelegramAPIServer.from_base(os.environ["TELEGRAM_API_URL"]))
    bot = Bot(os.environ["BOT_TOKEN"], session=session)
    # A generous timeout: with handle_as_tasks every join of a batch POSTs at once,
    # and waits for a pooled connection; a short one would just lose joins here.
    client = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    router = Router()

    @router.chat_member(ChatMemberUpdatedFilter(JOIN_TRANSITION))
    async def on_join(event: ChatMemberUpdated) -> None:
        await client.post(
            api_url,
            json={
                "telegramUserId": event.new_chat_member.user.id,
                "channelId": str(event.chat.id),
                "eventType": "Lead",
                "eventTime": int(event.date.timestamp()) * 1000,
            },
        )

    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    asyncio.run(
        dispatcher.start_polling(
            bot, allowed_updates=["message", "chat_member", "my_chat_member"], polling_timeout=1
        )
    )


if __name__ == "__main__":
    main()
