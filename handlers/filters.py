"""Router filters as awaitable `Filter`s.

aiogram runs a plain callable filter, a magic `F` expression included, through
`asyncio.to_thread`: a thread hop for every update the router sees, which at
thousands of joins a second cost more than the handler itself. A `Filter`
subclass is awaited in the event loop.
"""

from __future__ import annotations

from aiogram.filters import Filter
from aiogram.types import CallbackQuery, Chat, ChatMemberUpdated, TelegramObject


class ChatTypes(Filter):
    """The event's chat is one of `types` ("channel", "supergroup", "private")."""

    def __init__(self, *types: str) -> None:
        self.types = frozenset(types)

    async def __call__(self, event: TelegramObject) -> bool:
        chat = getattr(event, "chat", None)
        return isinstance(chat, Chat) and chat.type in self.types


CHANNELS = ChatTypes("channel", "supergroup")
PRIVATE = ChatTypes("private")


class People(Filter):
    """A membership change of a person. Bots are never joins: another admin's bot
    added to the channel is not a subscriber, and must not become a conversion."""

    async def __call__(self, event: TelegramObject) -> bool:
        return isinstance(event, ChatMemberUpdated) and not event.new_chat_member.user.is_bot


PEOPLE = People()


class CallbackData(Filter):
    """A callback query whose data starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def __call__(self, event: TelegramObject) -> bool:
        return isinstance(event, CallbackQuery) and (event.data or "").startswith(self.prefix)
