"""A fake Telegram Bot API server that aiogram's AiohttpSession can talk to over HTTP.

Point a bot at it with ``AiohttpSession(api=TelegramAPIServer.from_base(fake.url))``.
It follows /work/shared/telegram-notes.md: allowed_updates filters when an update is
queued, offsets confirm, chat_member needs the bot to be an admin, other admins'
invite links come back masked, and errors carry the HTTP status of their error_code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.simulators.telegram_models import (
    JSON,
    NO_INVITE_RIGHTS,
    OPT_IN_UPDATES,
    POLL_CONFLICT,
    WEBHOOK_CONFLICT,
    ApiError,
    Call,
    chat_full_info_json,
    chat_json,
    invite_link_json,
    mask_invite_url,
    member_json,
    message_json,
    new_invite_url,
    read_params,
    user_json,
)

__all__ = ["ApiError", "Call", "FakeTelegram"]

PRESENT = frozenset({"member", "administrator", "creator"})
_METHODS = (
    *("getMe", "deleteWebhook", "setWebhook", "getWebhookInfo", "getUpdates", "logOut"),
    *("close", "createChatInviteLink", "editChatInviteLink", "revokeChatInviteLink"),
    *("approveChatJoinRequest", "declineChatJoinRequest", "getChat", "getChatMember"),
    *("getChatAdministrators", "getChatMemberCount", "sendMessage", "editMessageText"),
    *("answerCallbackQuery", "setMyCommands", "deleteMyCommands", "getMyCommands"),
)
ADMIN_ID = 1  # the human owner of every fake chat; "another admin" in updates


@dataclass
class _Chat:
    id: int
    type: str
    title: str
    username: str | None
    bot_status: str
    bot_rights: dict[str, bool] | None

    def json(self) -> JSON:
        return chat_json(self.id, self.type, title=self.title, username=self.username)


class FakeTelegram:
    def __init__(
        self,
        token: str = "123456:TEST-fake-token",  # noqa: S107 - a fake token, by design
        bot_id: int = 123456,
        bot_username: str = "joinbridge_test_bot",
        *,
        emit_member_update_on_approve: bool = True,
    ) -> None:
        self.token = token
        self.bot_user: JSON = {
            **user_json(bot_id, "Joinbridge Test", is_bot=True, username=bot_username),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.emit_member_update_on_approve = emit_member_update_on_approve
        self.calls: list[Call] = []
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
        self._chats: dict[int, _Chat] = {}
        self._users: dict[int, JSON] = {}
        self._members: dict[tuple[int, int], JSON] = {}
        self._link_members: dict[str, set[int]] = {}
        self._requests: dict[tuple[int, int], str | None] = {}
        self._faults: dict[str, deque[ApiError]] = {}
        self._limits: dict[str, int] = {}
        self._hits: dict[str, deque[float]] = {}
        self._reject = False
        self._poll_generation = 0
        self._stopping = False
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0
        handlers: dict[str, Callable[[Call], Awaitable[Any]]] = {
            name: getattr(self, "_api_" + name) for name in _METHODS
        }
        # Telegram matches method names case-insensitively.
        self._handlers = {name.lower(): (name, fn) for name, fn in handlers.items()}

    # ---- server lifecycle -------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        # A short shutdown timeout: stop() already wakes every long poll.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # ---- observation ------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 5.0,
    ) -> Call:
        """The earliest recorded call that matches, waiting for one if there is none yet."""

        def find() -> Call | None:
            return next(
                (c for c in self.calls_to(method) if predicate is None or predicate(c)), None
            )

        if not await self._wait_until(lambda: find() is not None, timeout):
            raise TimeoutError(f"no matching {method} call within {timeout}s")
        found = find()
        assert found is not None
        return found

    async def wait_confirmed(
        self,
        update_id: int,
        timeout: float = 5.0,
    ) -> None:
        if not await self._wait_until(lambda: self.confirmed_offset > update_id, timeout):
            raise TimeoutError(f"update {update_id} not confirmed within {timeout}s")

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

    # ---- faults -----------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error_code: int,
        description: str,
        *,
        retry_after: int | None = None,
        count: int = 1,
    ) -> None:
        queue = self._faults.setdefault(method.lower(), deque())
        queue.extend(ApiError(error_code, description, retry_after) for _ in range(count))

    def clear_faults(self) -> None:
        """Forget faults queued by fail_next and limits set by limit_method."""
        self._faults.clear()
        self._limits.clear()

    def set_webhook(self, url: str | None) -> None:
        self.webhook_url = url or None

    def limit_method(self, method: str, per_minute: int) -> None:
        self._limits[method.lower()] = per_minute

    def reject_token(self, reject: bool = True) -> None:
        self._reject = reject

    def _check_faults(self, method: str) -> None:
        key = method.lower()
        if queue := self._faults.get(key):
            raise queue.popleft()
        if (limit := self._limits.get(key)) is not None:
            now = time.monotonic()
            hits = self._hits.setdefault(key, deque())
            while hits and now - hits[0] >= 60:
                hits.popleft()
            if len(hits) >= limit:
                oldest = hits[0] if hits else now  # per_minute=0 blocks every call
                wait = max(1, math.ceil(60 - (now - oldest)))
                raise ApiError(429, f"Too Many Requests: retry after {wait}", wait)
            hits.append(now)

    # ---- HTTP entry -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return ApiError(401, "Unauthorized").response()
        params, raw = await read_params(request)
        name = request.match_info["method"]
        entry = self._handlers.get(name.lower())
        call = Call(entry[0] if entry else name, params, time.monotonic(), raw)
        self.calls.append(call)
        self._notify()
        try:
            if self._reject:
                raise ApiError(401, "Unauthorized")
            if entry is None:
                raise ApiError(404, "Not Found: method not found")
            self._check_faults(call.method)
            result = await entry[1](call)
        except ApiError as error:
            return error.response()
        except (ValueError, TypeError) as error:
            # Malformed parameters (e.g. offset="abc"): Telegram answers 400, not 500.
            return ApiError(400, f"Bad Request: {error}").response()
        return web.json_response({"ok": True, "result": result})

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
        self._chats[chat_id] = _Chat(
            chat_id, chat_type, title, username, "administrator", bot_rights
        )

    def _chat(self, chat_id: int) -> _Chat:
        if chat_id not in self._chats:
            raise ValueError(f"unknown chat {chat_id}: call add_channel first")
        return self._chats[chat_id]

    def _user(self, user_id: int, first_name: str = "Test") -> JSON:
        return self._users.setdefault(user_id, user_json(user_id, first_name))

    def _bot_member(self, chat: _Chat) -> JSON:
        return member_json(chat.bot_status, self.bot_user, rights=chat.bot_rights)

    def _may_invite(self, chat: _Chat) -> bool:
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

    def _enqueue_member_update(self, kind: str, chat: _Chat, payload: JSON) -> int | None:
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
            self._chats[chat_id] = _Chat(
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

    # ---- Bot API methods: each takes the Call and returns the "result" JSON ------------

    def _target(self, call: Call) -> _Chat:
        chat_id = call.params.get("chat_id")
        if isinstance(chat_id, str) and chat_id.startswith("@"):
            found = [c for c in self._chats.values() if c.username == chat_id[1:]]
            if found:
                return found[0]
        elif isinstance(chat_id, int) and chat_id in self._chats:
            return self._chats[chat_id]
        raise ApiError(400, "Bad Request: chat not found")

    async def _api_getMe(self, call: Call) -> JSON:
        return self.bot_user

    async def _api_deleteWebhook(self, call: Call) -> bool:
        if call.params.get("drop_pending_updates") is True:
            self._updates.clear()
        self.webhook_url = None
        return True

    async def _api_setWebhook(self, call: Call) -> bool:
        self.set_webhook(call.raw.get("url"))
        self._notify()  # a pending long poll must notice the webhook
        return True

    async def _api_getWebhookInfo(self, call: Call) -> JSON:
        pending = len(self._updates)
        return {
            "url": self.webhook_url or "",
            "has_custom_certificate": False,
            "pending_update_count": pending,
        }

    async def _api_getUpdates(self, call: Call) -> list[JSON]:
        if self.webhook_url:
            raise ApiError(409, WEBHOOK_CONFLICT)
        # A newer getUpdates ends an older one that is still waiting, with a 409.
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        p = call.params
        if isinstance(p.get("allowed_updates"), list):
            self.allowed_updates = [str(kind) for kind in p["allowed_updates"]]
        offset = int(p.get("offset") or 0)
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self.confirmed_offset = max(self.confirmed_offset, offset)
            self._notify()
        elif offset < 0:  # -N: forget all but the last N updates
            self._updates = self._updates[offset:]
        limit = min(max(int(p.get("limit") or 100), 1), 100)
        timeout = min(max(float(p.get("timeout") or 0), 0.0), 50.0)

        def done() -> bool:
            ended = self._stopping or bool(self.webhook_url)
            return ended or bool(self._updates) or self._poll_generation != generation

        await self._wait_until(done, timeout)
        if self._poll_generation != generation:
            raise ApiError(409, POLL_CONFLICT)
        if self.webhook_url:
            raise ApiError(409, WEBHOOK_CONFLICT)
        batch = self._updates[:limit]
        self.updates_served += len(batch)
        return batch

    async def _api_logOut(self, call: Call) -> bool:
        return True

    async def _api_close(self, call: Call) -> bool:
        return True

    def _link_options(self, call: Call) -> JSON:
        p, name = call.params, call.raw.get("name")
        if name is not None and len(name) > 32:
            raise ApiError(400, "Bad Request: invite link name is too long")
        limit, approval = p.get("member_limit"), p.get("creates_join_request") is True
        if limit is not None and not (isinstance(limit, int) and 1 <= limit <= 99999):
            raise ApiError(400, "Bad Request: invalid member limit specified")
        if limit is not None and approval:
            raise ApiError(
                400,
                "Bad Request: member limit can't be specified for links requiring "
                "administrator approval",
            )
        expire = p.get("expire_date")
        return {
            "name": name,
            "expire_date": expire if isinstance(expire, int) and expire > 0 else None,
            "member_limit": limit,
            "creates_join_request": approval,
        }

    def _own_link(self, call: Call, chat: _Chat) -> JSON:
        link = self.links.get(call.raw.get("invite_link", ""))
        if link is None or link["chat_id"] != chat.id:
            raise ApiError(400, "Bad Request: INVITE_HASH_EXPIRED")
        return link

    async def _api_createChatInviteLink(self, call: Call) -> JSON:
        chat = self._target(call)
        if not self._may_invite(chat):
            raise ApiError(400, NO_INVITE_RIGHTS)
        link = invite_link_json(new_invite_url(), self.bot_user, **self._link_options(call))
        self.links[link["invite_link"]] = {**link, "chat_id": chat.id}
        return link

    async def _api_editChatInviteLink(self, call: Call) -> JSON:
        chat = self._target(call)
        if not self._may_invite(chat):
            raise ApiError(400, NO_INVITE_RIGHTS)
        old = self._own_link(call, chat)
        # Like the real server, omitted options are reset, not kept.
        link = invite_link_json(
            old["invite_link"],
            old["creator"],
            is_revoked=old["is_revoked"],
            **self._link_options(call),
        )
        self.links[link["invite_link"]] = {**link, "chat_id": chat.id}
        return link

    async def _api_revokeChatInviteLink(self, call: Call) -> JSON:
        chat = self._target(call)
        if not self._may_invite(chat):
            raise ApiError(400, NO_INVITE_RIGHTS)
        link = self._own_link(call, chat)
        link["is_revoked"] = True
        return {k: v for k, v in link.items() if k != "chat_id"}

    def _pop_request(self, call: Call) -> tuple[_Chat, int, str | None]:
        chat, user_id = self._target(call), call.params.get("user_id")
        if not self._may_invite(chat):
            raise ApiError(400, NO_INVITE_RIGHTS)
        if not isinstance(user_id, int) or (chat.id, user_id) not in self._requests:
            raise ApiError(400, "Bad Request: HIDE_REQUESTER_MISSING")
        return chat, user_id, self._requests.pop((chat.id, user_id))

    async def _api_approveChatJoinRequest(self, call: Call) -> bool:
        chat, user_id, url = self._pop_request(call)
        if self.emit_member_update_on_approve:
            self._join(chat.id, user_id, url, None, "left", "member", self.bot_user)
        else:  # the member still joins; only the update goes missing
            self._members[(chat.id, user_id)] = member_json("member", self._user(user_id))
        return True

    async def _api_declineChatJoinRequest(self, call: Call) -> bool:
        self._pop_request(call)
        return True

    async def _api_getChat(self, call: Call) -> JSON:
        user_id = call.params.get("chat_id")
        if isinstance(user_id, int) and user_id in self._users:
            first = self._users[user_id]["first_name"]
            return chat_full_info_json(chat_json(user_id, "private", title=first))
        return chat_full_info_json(self._target(call).json())

    async def _api_getChatMember(self, call: Call) -> JSON:
        chat, user_id = self._target(call), call.params.get("user_id")
        if not isinstance(user_id, int):
            raise ApiError(400, "Bad Request: invalid user_id specified")
        if user_id == self.bot_user["id"]:
            return self._bot_member(chat)
        if user_id == ADMIN_ID:
            return member_json("creator", self._user(ADMIN_ID, "Admin"))
        return self._members.get((chat.id, user_id)) or member_json("left", self._user(user_id))

    async def _api_getChatAdministrators(self, call: Call) -> list[JSON]:
        chat = self._target(call)
        admins = [member_json("creator", self._user(ADMIN_ID, "Admin"))]
        if chat.bot_status == "administrator":
            admins.append(self._bot_member(chat))
        tracked = self._members.items()
        admins += [m for (c, _), m in tracked if c == chat.id and m["status"] == "administrator"]
        return admins

    async def _api_getChatMemberCount(self, call: Call) -> int:
        chat = self._target(call)
        tracked = self._members.items()
        present = sum(1 for (c, _), m in tracked if c == chat.id and m["status"] in PRESENT)
        return 1 + present + (chat.bot_status in PRESENT)  # the owner, members, the bot

    async def _api_sendMessage(self, call: Call) -> JSON:
        chat_id = call.params.get("chat_id")
        if isinstance(chat_id, int) and chat_id > 0 and chat_id not in self._chats:
            first = self._user(chat_id)["first_name"]
            chat = chat_json(chat_id, "private", title=first)
        else:
            chat = self._target(call).json()
        self._next_message_id += 1
        text = call.raw.get("text", "")
        msg = message_json(self._next_message_id, chat, int(time.time()), text, self.bot_user)
        msg.pop("entities", None)  # the bot's own text carries only entities it sent
        markup = call.params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            msg["reply_markup"] = markup
        self.sent_messages.append(msg)
        return msg

    async def _api_editMessageText(self, call: Call) -> JSON | bool:
        if "inline_message_id" in call.params:
            return True
        chat_id, message_id = call.params.get("chat_id"), call.params.get("message_id")
        for msg in self.sent_messages:
            if msg["chat"]["id"] == chat_id and msg["message_id"] == message_id:
                if msg["text"] == call.raw.get("text"):
                    raise ApiError(400, "Bad Request: message is not modified")
                msg.update(text=call.raw.get("text", ""), edit_date=int(time.time()))
                return msg
        raise ApiError(400, "Bad Request: message to edit not found")

    async def _api_answerCallbackQuery(self, call: Call) -> bool:
        return True

    def _commands_key(self, call: Call) -> str:
        scope = call.params.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True) + "|" + call.raw.get("language_code", "")

    async def _api_setMyCommands(self, call: Call) -> bool:
        commands = call.params.get("commands")
        self.commands[self._commands_key(call)] = commands if isinstance(commands, list) else []
        return True

    async def _api_deleteMyCommands(self, call: Call) -> bool:
        self.commands.pop(self._commands_key(call), None)
        return True

    async def _api_getMyCommands(self, call: Call) -> list[JSON]:
        return self.commands.get(self._commands_key(call), [])
