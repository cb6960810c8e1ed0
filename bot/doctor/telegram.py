"""The doctor's Telegram checks, through aiogram's Bot as the bridge builds it:
the token (getMe), chat_member updates (getWebhookInfo), and each channel's
rights (getChatMember) and visibility (getChat). Read-only: nothing here
changes the bot's state at Telegram (no deleteWebhook, no getUpdates)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    AiogramError,
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import ChatMemberAdministrator, ChatMemberOwner, User
from pydantic import SecretStr

from bot.doctor.checklist import Check, fail, ok, skip, warn
from bot.polling.poller import ALLOWED_UPDATES
from storage.channels import Channel

_T = TypeVar("_T")

TOKEN_LINE = "bot token"  # noqa: S105 - the checklist line's name, not a secret
UPDATES_LINE = "chat_member updates"
INVITE_RIGHT = "Invite users via link"


def channel_label(channel: Channel) -> str:
    return f"channel “{channel.title}” ({channel.chat_id})"


class TelegramProbe:
    def __init__(self, api_url: str, token: SecretStr, timeout: float) -> None:
        self.api_url = api_url
        self._timeout = timeout
        session = AiohttpSession(api=TelegramAPIServer.from_base(api_url), timeout=timeout)
        self._bot = Bot(token.get_secret_value(), session=session)
        self.me: User | None = None  # set once the token check passed

    async def aclose(self) -> None:
        await self._bot.session.close()

    async def _call(self, call: Awaitable[_T]) -> _T:
        # The session's timeout bounds each request; this also bounds connecting.
        async with asyncio.timeout(self._timeout + 2):
            return await call

    def _unreachable(self, error: Exception) -> str:
        reason = error.message if isinstance(error, TelegramNetworkError) else "no answer in time"
        return f"Telegram is unreachable at {self.api_url}: {reason}"

    async def token(self) -> Check:
        try:
            me = await self._call(self._bot.get_me())
        except TelegramUnauthorizedError:
            return fail(
                TOKEN_LINE,
                "BotFather token is wrong or revoked: Telegram answered 401 Unauthorized",
                "copy the token from @BotFather (/mybots → your bot → API Token) into BOT_TOKEN.",
            )
        except (TelegramNetworkError, TimeoutError) as error:
            return fail(
                TOKEN_LINE,
                self._unreachable(error),
                "check this machine's network, DNS and proxy, and TELEGRAM_API_URL.",
            )
        except TelegramRetryAfter as error:
            return fail(
                TOKEN_LINE,
                f"Telegram asks to wait {error.retry_after} s before the next call",
                "run doctor again in a minute.",
            )
        except (TelegramAPIError, AiogramError) as error:
            return fail(
                TOKEN_LINE,
                f"{self.api_url} does not answer like the Bot API: {_message(error)}",
                "check TELEGRAM_API_URL (normally https://api.telegram.org).",
            )
        self.me = me
        return ok(TOKEN_LINE, f"@{me.username} (id {me.id})")

    async def updates(self) -> Check:
        if "chat_member" not in ALLOWED_UPDATES:
            return fail(
                UPDATES_LINE,
                "the bridge's getUpdates does not ask for chat_member, so Telegram never sends"
                " joins",
                "put chat_member back into ALLOWED_UPDATES in bot/polling/poller.py.",
            )
        try:
            info = await self._call(self._bot.get_webhook_info())
        except (TelegramNetworkError, TimeoutError) as error:
            return fail(UPDATES_LINE, self._unreachable(error), "check the network and run again.")
        except (TelegramAPIError, AiogramError) as error:
            return fail(
                UPDATES_LINE, f"getWebhookInfo failed: {_message(error)}", "run doctor again later."
            )
        problems, fixes = [], []
        if info.url:
            problems.append(
                f"a webhook is set ({_site_of(info.url)}), and getUpdates answers 409 Conflict"
                " while it is"
            )
            fixes.append(
                "the bridge deletes it when it starts (deleteWebhook), so stop whatever else"
                " receives this bot's updates or give the bridge a bot of its own"
            )
        asked = info.allowed_updates
        if asked is not None and "chat_member" not in asked:
            problems.append(
                "Telegram drops chat_member updates for now: the last getUpdates or setWebhook"
                f" asked only for {', '.join(asked) or 'the default kinds'}"
            )
            fixes.append(
                "start the bridge, which asks for chat_member, and let no other program poll"
                " with this token"
            )
        count = info.pending_update_count
        waiting = f"; {count} update{'' if count == 1 else 's'} waiting"
        if problems:
            return warn(UPDATES_LINE, "; ".join(problems) + waiting, "; ".join(fixes) + ".")
        state = (
            "Telegram delivers them now"
            if asked is not None
            else "Telegram starts delivering them when the bridge polls"
        )
        return ok(UPDATES_LINE, f"requested in getUpdates' allowed_updates; {state}{waiting}")

    async def rights(self, channel: Channel) -> Check:
        name = f"{channel_label(channel)} rights"
        if self.me is None:
            return skip(name, "not checked: the bot token check failed")
        bot = f"@{self.me.username}" if self.me.username else "the bot"
        promote = (
            f"promote the bot with the Invite users right (the channel → Administrators → {bot}"
            f" → {INVITE_RIGHT})."
        )
        try:
            member = await self._call(self._bot.get_chat_member(channel.chat_id, self.me.id))
        except (TelegramNetworkError, TimeoutError) as error:
            return fail(name, self._unreachable(error), "check the network and run again.")
        except TelegramRetryAfter as error:
            return warn(
                name,
                f"not checked: Telegram asks to wait {error.retry_after} s",
                "run doctor again in a minute.",
            )
        except (TelegramAPIError, AiogramError) as error:
            return fail(
                name,
                f"Telegram cannot show the bot's membership: {_message(error)}",
                f"add {bot} to the channel as an administrator with the {INVITE_RIGHT} right.",
            )
        if isinstance(member, ChatMemberOwner):
            return ok(name, "the bot owns the channel")
        if isinstance(member, ChatMemberAdministrator):
            if member.can_invite_users:
                return ok(name, f"administrator with {INVITE_RIGHT}")
            return fail(
                name,
                f"administrator without the {INVITE_RIGHT} right, so no personal links",
                promote,
            )
        return fail(
            name,
            f"the bot is not an administrator (status: {member.status})",
            f"add {bot} as an administrator with the {INVITE_RIGHT} right (the channel →"
            " Administrators → Add Admin).",
        )

    async def visibility(self, channel: Channel) -> Check:
        name = f"{channel_label(channel)} visibility"
        if self.me is None:
            return skip(name, "not checked: the bot token check failed")
        try:
            chat = await self._call(self._bot.get_chat(channel.chat_id))
        except (TelegramNetworkError, TimeoutError) as error:
            return fail(name, self._unreachable(error), "check the network and run again.")
        except (TelegramAPIError, AiogramError) as error:
            # The rights line already says what to do about a chat the bot cannot see.
            return skip(name, f"not checked: {_message(error)}")
        if not chat.username:
            return ok(name, "private: people join through the bot's personal links")
        fix = "make the channel private"
        if channel.mode != "request":
            fix += f", or switch it to join requests: /mode @{chat.username} request"
        return warn(
            name,
            f"public (@{chat.username}): personal links still work, but anyone can join"
            f" through t.me/{chat.username} without one, so their joins are organic",
            fix + ".",
        )


def _message(error: Exception) -> str:
    text = error.message if isinstance(error, TelegramAPIError) else str(error)
    return text.splitlines()[0] if text else type(error).__name__


def _site_of(url: str) -> str:
    # Webhook paths often carry the bot token or a secret: show the site only.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else "a URL"
