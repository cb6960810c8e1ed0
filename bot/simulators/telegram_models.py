"""Wire layer of the Telegram fake (bot/simulators/telegram.py): request parsing,
error responses and JSON builders.

Each builder returns the wire JSON of one Bot API object with every field that
aiogram 3.31's pydantic models require, so aiogram validates the fake's answers
exactly as it validates Telegram's.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]

WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
POLL_CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
NO_INVITE_RIGHTS = "Bad Request: not enough rights to manage chat invite links"
ATTACH = "attach://"  # an InputFile parameter naming another multipart part


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    # The undecoded form values: text such as "123" or "true" stays a string here.
    raw: dict[str, str] = field(default_factory=dict)
    # The multipart/form-data file parts, by part name, byte for byte.
    files: dict[str, bytes] = field(default_factory=dict)

    def upload(self, param: str) -> bytes | None:
        """The file uploaded for an InputFile parameter (sendPhoto's `photo`): a
        file part of that name, or the part that `attach://<name>` names (aiogram
        sends every upload that way); None for a file_id or URL."""
        if param in self.files:
            return self.files[param]
        value = self.raw.get(param, "")
        return self.files.get(value.removeprefix(ATTACH)) if value.startswith(ATTACH) else None


class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after

    def response(self) -> web.Response:
        body: JSON = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return web.json_response(body, status=self.code)


def decode_value(value: str) -> Any:
    # aiogram JSON-encodes every non-string value (ints, bools, lists, objects).
    if value[:1] in '[{"-' or value[:1].isdigit() or value in ("true", "false", "null"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


async def read_params(
    request: web.Request,
) -> tuple[dict[str, Any], dict[str, str], dict[str, bytes]]:
    """(decoded params, raw form values, uploaded files) of a Bot API request."""
    raw: dict[str, str] = dict(request.query)
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        body = await request.json()
        params = dict(body) if isinstance(body, dict) else {}
        raw.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()})
    elif request.can_read_body:
        form = await request.post()  # urlencoded and multipart alike
        for key, value in form.items():
            if isinstance(value, str):
                raw[key] = value
            elif isinstance(value, web.FileField):  # uploads: their bytes, and text if any
                files[key] = value.file.read()
                raw[key] = files[key].decode(errors="replace")
            else:
                raw[key] = bytes(value).decode(errors="replace")
    params.update({k: decode_value(v) for k, v in raw.items() if k not in params})
    return params, raw, files


# Rights of a freshly added channel admin bot as the Telegram apps grant them.
DEFAULT_BOT_RIGHTS: dict[str, bool] = {
    "can_be_edited": False,
    "is_anonymous": False,
    "can_manage_chat": True,
    "can_delete_messages": True,
    "can_manage_video_chats": True,
    "can_restrict_members": True,
    "can_promote_members": False,
    "can_change_info": True,
    "can_invite_users": True,
    "can_post_stories": False,
    "can_edit_stories": False,
    "can_delete_stories": False,
    "can_send_welcome_messages": False,
    "can_post_messages": True,
    "can_edit_messages": True,
}

# Fields aiogram's ChatMemberRestricted requires besides status/user/is_member.
_RESTRICTED_FLAGS = (
    "can_send_messages",
    "can_send_audios",
    "can_send_documents",
    "can_send_photos",
    "can_send_videos",
    "can_send_video_notes",
    "can_send_voice_notes",
    "can_send_polls",
    "can_send_other_messages",
    "can_add_web_page_previews",
    "can_react_to_messages",
    "can_edit_tag",
    "can_change_info",
    "can_invite_users",
    "can_pin_messages",
    "can_manage_topics",
)

# Update kinds Telegram leaves out when allowed_updates is empty or never set.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

# The update kinds whose member objects an older or newer server shapes differently
# (TelegramWorld.omit_fields / extra_fields).
MEMBER_UPDATES = frozenset({"chat_member", "my_chat_member", "chat_join_request"})

# ChatMember fields aiogram 3.31 requires (or knows) that the real captures in
# /work/shared/telegram-payloads lack, because a later Bot API version added them.
# For TelegramWorld.omit_fields: an older server's update fails aiogram's validation.
# can_manage_topics (6.3) is left out: every restricted capture carries it.
OLD_SERVER_OMITS: frozenset[str] = frozenset(
    {
        "can_manage_video_chats",  # 6.0; older servers send can_manage_voice_chats
        # 6.5 split can_send_media_messages into these six.
        "can_send_audios",
        "can_send_documents",
        "can_send_photos",
        "can_send_videos",
        "can_send_video_notes",
        "can_send_voice_notes",
        "can_post_stories",  # 6.9, with the next two
        "can_edit_stories",
        "can_delete_stories",
        "can_manage_direct_messages",  # 9.2
        "can_edit_tag",  # 9.5
        "can_react_to_messages",  # 10.0
        "can_send_welcome_messages",  # 10.3
    }
)


def user_json(
    user_id: int, first_name: str = "Test", *, is_bot: bool = False, username: str | None = None
) -> JSON:
    user: JSON = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if username is not None:
        user["username"] = username
    return user


def chat_json(
    chat_id: int, chat_type: str, *, title: str | None = None, username: str | None = None
) -> JSON:
    chat: JSON = {"id": chat_id, "type": chat_type}
    if chat_type == "private":
        chat["first_name"] = title or "Test"
    elif title is not None:
        chat["title"] = title
    if username is not None:
        chat["username"] = username
    return chat


def chat_full_info_json(chat: JSON) -> JSON:
    """ChatFullInfo: Chat plus the fields API 7.3+ made mandatory."""
    gifts = {
        "unlimited_gifts": False,
        "limited_gifts": False,
        "unique_gifts": False,
        "premium_subscription": False,
        "gifts_from_channels": False,
    }
    return {**chat, "accent_color_id": 0, "max_reaction_count": 11, "accepted_gift_types": gifts}


def member_json(
    status: str,
    user: JSON,
    *,
    rights: dict[str, bool] | None = None,
    is_member: bool | None = None,
    allow_unknown: bool = False,
) -> JSON:
    """A ChatMember of any status; `is_member` (default true) matters for 'restricted'.

    A status the Bot API does not define raises ValueError, so a typo in a test fails
    loudly; with `allow_unknown` it gives {"status", "user"} (plus `is_member` when
    passed), as a newer server with a new status might send.
    """
    member: JSON = {"status": status, "user": user}
    if status == "administrator":
        member.update(DEFAULT_BOT_RIGHTS if rights is None else {**DEFAULT_BOT_RIGHTS, **rights})
    elif status == "creator":
        member["is_anonymous"] = False
    elif status == "kicked":
        member["until_date"] = 0  # 0 = banned forever
    elif status == "restricted":
        member.update(dict.fromkeys(_RESTRICTED_FLAGS, False))
        member.update(is_member=is_member is not False, until_date=0)
    elif status not in ("member", "left"):
        if not allow_unknown:
            raise ValueError(f"unknown chat member status {status!r}")
        if is_member is not None:
            member["is_member"] = is_member
    return member


def new_invite_url() -> str:
    # Telegram's invite hashes are 16 URL-safe characters after "+".
    return "https://t.me/+" + secrets.token_urlsafe(12)[:16]


def mask_invite_url(url: str) -> str:
    """What Telegram shows of another admin's link: the hash's second half replaced
    by ASCII '...' (three dots, not '…'), as in the real capture
    /work/shared/telegram-payloads/14_channel_join_via_masked_other_admin_request_link.json."""
    cut = max(url.rfind("+"), url.rfind("/")) + 1
    secret = url[cut:]
    return url[:cut] + secret[: len(secret) // 2] + "..."


def invite_link_json(
    url: str,
    creator: JSON,
    *,
    name: str | None = None,
    expire_date: int | None = None,
    member_limit: int | None = None,
    creates_join_request: bool = False,
    is_revoked: bool = False,
) -> JSON:
    link: JSON = {
        "invite_link": url,
        "creator": creator,
        "creates_join_request": creates_join_request,
        "is_primary": False,
        "is_revoked": is_revoked,
    }
    optional = {"name": name, "expire_date": expire_date, "member_limit": member_limit}
    link.update({key: value for key, value in optional.items() if value is not None})
    return link


def message_json(message_id: int, chat: JSON, date: int, text: str, sender: JSON | None) -> JSON:
    msg: JSON = {"message_id": message_id, "date": date, "chat": chat, "text": text}
    if sender is not None:  # channel posts have no "from"
        msg["from"] = sender
    if text.startswith("/"):
        # Telegram marks a leading command so aiogram's Command filter sees it.
        length = len(text.split(maxsplit=1)[0])
        msg["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return msg


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG, from its header; None for anything else
    (Telegram answers IMAGE_PROCESS_FAILED to a photo it cannot decode)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2  # JPEG: walk the segments to the frame header (SOFn) that holds the size
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            return int.from_bytes(data[at + 7 : at + 9], "big"), height
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def photo_sizes_json(data: bytes, width: int, height: int) -> list[JSON]:
    """A sent photo's PhotoSize list. Telegram adds smaller copies (90, 320, 800 px);
    the simulator keeps only the one it was sent."""
    file_id = "AgACAgIAAx" + secrets.token_urlsafe(24)
    return [
        {
            "file_id": file_id,
            "file_unique_id": file_id[-12:],
            "width": width,
            "height": height,
            "file_size": len(data),
        }
    ]
