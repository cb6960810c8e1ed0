"""The Bot API methods of the Telegram simulator: each takes the Call and returns the
"result" JSON, or raises ApiError with Telegram's error_code and description."""

from __future__ import annotations

import json
import time

from bot.simulators.telegram_models import (
    JSON,
    NO_INVITE_RIGHTS,
    POLL_CONFLICT,
    WEBHOOK_CONFLICT,
    ApiError,
    Call,
    chat_full_info_json,
    chat_json,
    image_size,
    invite_link_json,
    member_json,
    message_json,
    new_invite_url,
    photo_sizes_json,
)
from bot.simulators.telegram_state import ADMIN_ID, PRESENT, SimulatedChat, TelegramWorld

METHODS = (
    *("getMe", "deleteWebhook", "setWebhook", "getWebhookInfo", "getUpdates", "logOut"),
    *("close", "createChatInviteLink", "editChatInviteLink", "revokeChatInviteLink"),
    *("approveChatJoinRequest", "declineChatJoinRequest", "getChat", "getChatMember"),
    *("getChatAdministrators", "getChatMemberCount", "sendMessage", "editMessageText"),
    *("answerCallbackQuery", "setMyCommands", "deleteMyCommands", "getMyCommands"),
    "sendPhoto",
)


class BotApiMethods(TelegramWorld):
    """`_api_<method>` for every Bot API method the bridge calls."""

    def _target(self, call: Call) -> SimulatedChat:
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
        if isinstance(call.params.get("allowed_updates"), list):  # shared with getUpdates
            self.allowed_updates = [str(kind) for kind in call.params["allowed_updates"]]
        self._notify()  # a pending long poll must notice the webhook
        return True

    async def _api_getWebhookInfo(self, call: Call) -> JSON:
        pending = len(self._updates)
        info: JSON = {
            "url": self.webhook_url or "",
            "has_custom_certificate": False,
            "pending_update_count": pending,
        }
        # As telegram-bot-api does: the list (set by getUpdates or setWebhook) is
        # shown only when it differs from the default.
        if self.allowed_updates:
            info["allowed_updates"] = self.allowed_updates
        return info

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

    def _own_link(self, call: Call, chat: SimulatedChat) -> JSON:
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

    def _pop_request(self, call: Call) -> tuple[SimulatedChat, int, str | None]:
        chat, user_id = self._target(call), call.params.get("user_id")
        if not self._may_invite(chat):
            raise ApiError(400, NO_INVITE_RIGHTS)
        if not isinstance(user_id, int) or (chat.id, user_id) not in self._requests:
            raise ApiError(400, "Bad Request: HIDE_REQUESTER_MISSING")
        return chat, user_id, self._requests.pop((chat.id, user_id))

    async def _api_approveChatJoinRequest(self, call: Call) -> bool:
        chat, user_id, url = self._pop_request(call)
        if self.emit_member_update_on_approve and self.bare_approval_echo:
            self._join(chat.id, user_id, None, None, "left", "member", None)
        elif self.emit_member_update_on_approve:
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

    def _chat_to_send_to(self, call: Call) -> JSON:
        chat_id = call.params.get("chat_id")
        if isinstance(chat_id, int) and chat_id > 0 and chat_id not in self._chats:
            first = self._user(chat_id)["first_name"]
            return chat_json(chat_id, "private", title=first)
        return self._target(call).json()

    def _sent(self, call: Call, msg: JSON) -> JSON:
        markup = call.params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            msg["reply_markup"] = markup
        self.sent_messages.append(msg)
        return msg

    async def _api_sendMessage(self, call: Call) -> JSON:
        chat = self._chat_to_send_to(call)
        self._next_message_id += 1
        text = call.raw.get("text", "")
        msg = message_json(self._next_message_id, chat, int(time.time()), text, self.bot_user)
        msg.pop("entities", None)  # the bot's own text carries only entities it sent
        return self._sent(call, msg)

    async def _api_sendPhoto(self, call: Call) -> JSON:
        """A photo uploaded as multipart/form-data (`photo` the file part, or
        `attach://<part>`); file_ids and URLs name files the simulator does not hold."""
        chat = self._chat_to_send_to(call)
        photo = call.upload("photo")
        if photo is None:
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        size = image_size(photo)
        if size is None:
            raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        width, height = size
        # The Bot API's limits: width + height at most 10000, a ratio of at most 20.
        short, long = sorted(size)
        if short < 1 or width + height > 10000 or long > 20 * short:
            raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        self._next_message_id += 1
        msg: JSON = {
            "message_id": self._next_message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": self.bot_user,
            "photo": photo_sizes_json(photo, width, height),
        }
        if caption := call.raw.get("caption"):
            msg["caption"] = caption
        return self._sent(call, msg)

    async def _api_editMessageText(self, call: Call) -> JSON | bool:
        if "inline_message_id" in call.params:
            return True
        chat_id, message_id = call.params.get("chat_id"), call.params.get("message_id")
        for msg in self.sent_messages:
            if msg["chat"]["id"] == chat_id and msg["message_id"] == message_id:
                if "text" not in msg:
                    raise ApiError(400, "Bad Request: there is no text in the message to edit")
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
