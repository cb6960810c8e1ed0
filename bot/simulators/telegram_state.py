"""The world the Telegram simulator (bot/simulators/telegram.py) keeps: chats, the
bot's rights, members, invite links and the update queue, and the ways a test or the
sandbox changes it (a user joins, leaves, asks to join, writes; the bot is promoted).

It follows /work/shared/telegram-notes.md: allowed_updates filters when an update is
queued, chat_member needs the bot to be an admin, and other admins' invite links come
back masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.simulators.telegram_models import (
    JSON,
    OPT_IN_UPDATES,
    chat_json,
    invite_link_json,
    mask_invite_url,
    member_json,
    message_json,
    user_json,
)

PRESENT = frozenset({"member", "administrator", "creator"})
ADMIN_ID = 1  # the human owner of every simulated chat; "another admin" in updates


@dataclass
class SimulatedChat:
    id: int
    type: str
    title: str
    username: str | None
    bot_status: str
    bot_rights: dict[str, bool] | None

    def json(self) -> JSON:
        return chat_json(self.id, self.type, title=self.title, username=self.username)


class TelegramWorld:
    """State and simulated events; the Bot API methods and the server build on it."""

    def __init__(
        self,
        bot_id: int,
        bot_username: str,
        *,
        emit_member_update_on_approve: bool = True,
    ) -> None:
        self.bot_user: JSON = {
            **user_json(bot_id, "Joinbridge Test", is_bot=True, username=bot_username),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.emit_member_update_on_approve = emit_member_update_on_approve
        self.allowed_updates: list[str] | None = None
        self.confirmed_offset = 0
        self.updates_served = 0
        self.links: dict[str, JSON] = {}
        self.sent_messages: list[JSON] = []
        self.webhook_url: str | None = None
        self.commands: dict[str, list[JSON]] = {}
        self._updates: list[JSON] = []
        self.history: dict[int, JSON] = {}
        self._next_update_id = 1000
        self._next_message_id = 0
        self._chats: dict[int, SimulatedChat] = {}
        self._users: dict[int, JSON] = {}
        self._members: dict[tuple[int, int], JSON] = {}
        self._link_members: dict[str, set[int]] = {}
        self._requests: dict[tuple[int, int], str | None] = {}
        self._poll_generation = 0
        self._stopping = False
        self._changed = asyncio.Event()

    @property
    def pending(self) -> list[JSON]:
        return list(self._updates)

    def redeliver_unconfirmed(self) -> None:
        """Nothing to do: getUpdates serves unconfirmed updates again, as Telegram does."""

    def _notify(self) -> None:
        # Swap the event so each waiter re-checks its condition once per change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, condition: Callable[[], bool], seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = self._changed
            # On timeout the loop checks the condition one last time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return True

    def set_webhook(self, url: str | None) -> None:
        self.webhook_url = url or None

    # ---- chats and membership ---------------------------------------------------------

    def add_channel(
        self,
        chat_id: int,
        title: str,
        username: str | None = None,
        *,
        bot_rights: dict[str, bool] | None = None,
        chat_type: str = "channel",
    ) -> None:
        self._chats[chat_id] = SimulatedChat(
            chat_id, chat_type, title, username, "administrator", bot_rights
        )

    def _chat(self, chat_id: int) -> SimulatedChat:
        if chat_id not in self._chats:
            raise ValueError(f"unknown chat {chat_id}: call add_channel first")
        return self._chats[chat_id]

    def _user(self, user_id: int, first_name: str = "Test") -> JSON:
        return self._users.setdefault(user_id, user_json(user_id, first_name))

    def _bot_member(self, chat: SimulatedChat) -> JSON:
        return member_json(chat.bot_status, self.bot_user, rights=chat.bot_rights)

    def _may_invite(self, chat: SimulatedChat) -> bool:
        return chat.bot_status == "administrator" and self._bot_member(chat)["can_invite_users"]

    def _link_in_update(self, chat_id: int, url: str | None) -> JSON | None:
        """The invite_link object Telegram puts in an update: full for our links, else masked."""
        if url is None:
            return None
        if url in self.links and self.links[url]["chat_id"] == chat_id:
            return {k: v for k, v in self.links[url].items() if k != "chat_id"}
        return invite_link_json(mask_invite_url(url), self._user(ADMIN_ID, "Admin"))

    def _check_usable(self, url: str | None, *, approved: bool) -> None:
        # A simulated user cannot join through a dead link; fail loudly rather than
        # produce a join that real Telegram would never send.
        link = self.links.get(url or "")
        if link is None:
            return
        if link["is_revoked"] or link.get("expire_date", math.inf) <= time.time():
            raise ValueError(f"invite link {url} is revoked or expired")
        if link["creates_join_request"] and not approved:
            raise ValueError(f"invite link {url} needs approval: use join_request()")
        if len(self._link_members.get(link["invite_link"], ())) >= link.get(
            "member_limit", math.inf
        ):
            raise ValueError(f"invite link {url} reached its member_limit")

    def _enqueue_member_update(self, kind: str, chat: SimulatedChat, payload: JSON) -> int | None:
        # Telegram sends chat_member and chat_join_request only to admin bots.
        if kind != "my_chat_member" and chat.bot_status != "administrator":
            return None
        return self.enqueue(kind, {"chat": chat.json(), **payload})

    def join(
        self,
        chat_id: int,
        user_id: int,
        invite_link: str | None = None,
        *,
        date: int | None = None,
        old_status: str = "left",
        new_status: str = "member",
        via_join_request: bool = False,
        first_name: str = "Test",
    ) -> int | None:
        actor = self._user(ADMIN_ID, "Admin") if via_join_request else None
        return self._join(
            chat_id, user_id, invite_link, date, old_status, new_status, actor, first_name
        )

    def _join(
        self,
        chat_id: int,
        user_id: int,
        invite_link: str | None,
        date: int | None,
        old_status: str,
        new_status: str,
        approver: JSON | None,
        first_name: str = "Test",
    ) -> int | None:
        chat = self._chat(chat_id)
        user = self._user(user_id, first_name)
        self._check_usable(invite_link, approved=approver is not None)
        new = member_json(new_status, user, is_member=True)
        self._members[(chat_id, user_id)] = new
        if invite_link in self.links:
            self._link_members.setdefault(invite_link, set()).add(user_id)
        payload: JSON = {
            "from": approver or user,
            "date": int(time.time()) if date is None else date,
            "old_chat_member": member_json(old_status, user, is_member=False),
            "new_chat_member": new,
        }
        if (link := self._link_in_update(chat_id, invite_link)) is not None:
            payload["invite_link"] = link
        if approver is not None:
            payload["via_join_request"] = True
        return self._enqueue_member_update("chat_member", chat, payload)

    def leave(
        self,
        chat_id: int,
        user_id: int,
        *,
        date: int | None = None,
        new_status: str = "left",
        send_update: bool = True,
    ) -> int | None:
        """The member leaves (or is kicked). `send_update=False`: the member is gone
        (getChatMember says so) but the chat_member update never comes, as happens
        in large chats (tdlib/telegram-bot-api#877)."""
        chat = self._chat(chat_id)
        user = self._user(user_id)
        old = self._members.get((chat_id, user_id)) or member_json("member", user)
        new = member_json(new_status, user, is_member=False)
        self._members[(chat_id, user_id)] = new
        for url, members in self._link_members.items():
            if self.links[url]["chat_id"] == chat_id:
                members.discard(user_id)  # a leave frees the member_limit slot
        if not send_update:
            return None
        actor = user if new_status == "left" else self._user(ADMIN_ID, "Admin")
        payload: JSON = {
            "from": actor,
            "date": int(time.time()) if date is None else date,
            "old_chat_member": old,
            "new_chat_member": new,
        }
        return self._enqueue_member_update("chat_member", chat, payload)

    def join_request(
        self, chat_id: int, user_id: int, invite_link: str | None, *, date: int | None = None
    ) -> int | None:
        chat = self._chat(chat_id)
        user = self._user(user_id)
        self._requests[(chat_id, user_id)] = invite_link
        payload: JSON = {
            "from": user,
            "user_chat_id": user_id,
            "date": int(time.time()) if date is None else date,
        }
        if (link := self._link_in_update(chat_id, invite_link)) is not None:
            payload["invite_link"] = link
        if not self._may_invite(chat):
            return None
        return self._enqueue_member_update("chat_join_request", chat, payload)

    def bot_status_change(
        self,
        chat_id: int,
        new_status: str,
        *,
        rights: dict[str, bool] | None = None,
        by_user_id: int = 1,
    ) -> int | None:
        if chat_id not in self._chats:  # the bot is being added to a chat it never saw
            self._chats[chat_id] = SimulatedChat(
                chat_id, "channel", f"Channel {chat_id}", None, "left", None
            )
        chat = self._chats[chat_id]
        old = self._bot_member(chat)
        chat.bot_status, chat.bot_rights = new_status, rights
        payload: JSON = {
            "from": self._user(by_user_id, "Admin"),
            "date": int(time.time()),
            "old_chat_member": old,
            "new_chat_member": self._bot_member(chat),
        }
        return self._enqueue_member_update("my_chat_member", chat, payload)

    def message(self, chat_id: int, user_id: int, text: str) -> int | None:
        user = self._user(user_id)
        if chat_id == user_id:
            chat = chat_json(user_id, "private", title=user["first_name"])
        else:
            chat = self._chat(chat_id).json()
        self._next_message_id += 1
        msg = message_json(self._next_message_id, chat, int(time.time()), text, user)
        return self.enqueue("message", msg)

    # ---- updates ----------------------------------------------------------------------

    def enqueue(self, kind: str, payload: JSON) -> int | None:
        # The filter applies when the update is queued: a dropped update never comes back.
        allowed = self.allowed_updates
        if not (kind in allowed if allowed else kind not in OPT_IN_UPDATES):
            return None
        update_id = self._next_update_id
        self._next_update_id += 1
        update = {"update_id": update_id, kind: payload}
        self._updates.append(update)
        self.history[update_id] = update
        self._notify()
        return update_id

    def requeue(self, update_id: int) -> None:
        """Serve an update again, as Telegram does when its confirmation never came
        (a poller that died before its next getUpdates, then started without an offset)."""
        if all(u["update_id"] != update_id for u in self._updates):
            self._updates.append(self.history[update_id])
            self._updates.sort(key=lambda u: int(u["update_id"]))
        self._notify()
