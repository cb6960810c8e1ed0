"""The world the Telegram simulator (bot/simulators/telegram.py) keeps: chats, the
bot's rights, members, invite links and the update queue, and the ways a test or the
sandbox changes it (a user joins, leaves, asks to join, writes; the bot is promoted).

It follows /work/shared/telegram-notes.md: allowed_updates filters when an update is
queued, chat_member needs the bot to be an admin, and other admins' invite links come
back masked. Real and self-hosted Bot API servers are less tidy than aiogram expects,
so a test can make the world send their shapes (/work/shared/telegram-payloads): member
fields an older server lacks (omit_fields), fields a newer one adds (extra_fields),
statuses aiogram does not know (allow_unknown_status), and captured updates verbatim
(enqueue_raw).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.simulators.telegram_models import (
    JSON,
    MEMBER_UPDATES,
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
        # The chat_member update an approval emits carries neither the invite link nor
        # via_join_request, as real servers sometimes send it (tdlib/telegram-bot-api#650).
        self.bare_approval_echo = False
        # The server's shape, applied to chat_member, my_chat_member and
        # chat_join_request updates as they are queued (see enqueue). Tests set them
        # after construction; the defaults send what aiogram 3.31 expects.
        # Field names dropped from every ChatMember object, at any status (an older
        # server, e.g. telegram_models.OLD_SERVER_OMITS).
        self.omit_fields: frozenset[str] = frozenset()
        # Fields merged into the update's payload and into each ChatMember object (a
        # newer server); a name that is already there is overwritten.
        self.extra_fields: dict[str, Any] = {}
        # join / leave / bot_status_change accept a status the Bot API does not define
        # (sent as just status and user); off, such a status is a test's typo and raises.
        self.allow_unknown_status = False
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
        # bot_status_change checked the status when it was set.
        return member_json(
            chat.bot_status, self.bot_user, rights=chat.bot_rights, allow_unknown=True
        )

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
        unknown = self.allow_unknown_status
        new = member_json(new_status, user, is_member=True, allow_unknown=unknown)
        old = member_json(old_status, user, is_member=False, allow_unknown=unknown)
        self._members[(chat_id, user_id)] = new
        if invite_link in self.links:
            self._link_members.setdefault(invite_link, set()).add(user_id)
        payload: JSON = {
            "from": approver or user,
            "date": int(time.time()) if date is None else date,
            "old_chat_member": old,
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
        new = member_json(
            new_status, user, is_member=False, allow_unknown=self.allow_unknown_status
        )
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
        # Built first so that a rejected status leaves the world unchanged.
        new = member_json(
            new_status, self.bot_user, rights=rights, allow_unknown=self.allow_unknown_status
        )
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
            "new_chat_member": new,
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
        """Queue an update of `kind` with the next update_id, shaped by omit_fields and
        extra_fields when it is a member update; None when allowed_updates drops it."""
        if kind in MEMBER_UPDATES:
            payload = self._shaped(payload)
        return self._queue(kind, {kind: payload})

    def enqueue_raw(self, update: JSON) -> int | None:
        """Queue `update` verbatim (e.g. a capture from /work/shared/telegram-payloads,
        retargeted by the caller) under the next update_id, which replaces its own.

        Only the allowed_updates filter applies, as in `enqueue`: it does NOT check that
        the bot is an admin of the chat, does not change the world's members or links,
        and ignores omit_fields / extra_fields, so a replay keeps the capture's shape.
        A chat_join_request is the one exception: Telegram knows the requests it
        reports, so the request becomes pending here and can be approved or declined.
        Returns the update_id, or None when the filter dropped the update.
        """
        kinds = [key for key in update if key != "update_id"]
        if len(kinds) != 1:
            raise ValueError(f"an update holds exactly one kind of event, not {kinds}")
        # A copy: the caller may reuse or edit its dict after queueing it.
        kind, payload = kinds[0], copy.deepcopy(update[kinds[0]])
        update_id = self._queue(kind, {kind: payload})
        if update_id is not None and kind == "chat_join_request":
            link = payload.get("invite_link") or {}
            key = (payload["chat"]["id"], payload["from"]["id"])
            self._requests[key] = link.get("invite_link")
        return update_id

    def _shaped(self, payload: JSON) -> JSON:
        # Copies: the world keeps its own member objects for getChatMember.
        shaped = {**payload, **self.extra_fields}
        for key in ("old_chat_member", "new_chat_member"):
            if isinstance(member := payload.get(key), dict):
                member = {**member, **self.extra_fields}
                shaped[key] = {k: v for k, v in member.items() if k not in self.omit_fields}
        return shaped

    def _queue(self, kind: str, body: JSON) -> int | None:
        # The filter applies when the update is queued: a dropped update never comes back.
        allowed = self.allowed_updates
        if not (kind in allowed if allowed else kind not in OPT_IN_UPDATES):
            return None
        update_id = self._next_update_id
        self._next_update_id += 1
        update = {"update_id": update_id, **body}
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
