"""The Telegram simulator's wire layer moved into the package
(bot/simulators/telegram_models.py); tests keep importing it from here."""

from bot.simulators.telegram_models import (
    DEFAULT_BOT_RIGHTS,
    JSON,
    NO_INVITE_RIGHTS,
    OPT_IN_UPDATES,
    POLL_CONFLICT,
    WEBHOOK_CONFLICT,
    ApiError,
    Call,
    chat_full_info_json,
    chat_json,
    decode_value,
    invite_link_json,
    mask_invite_url,
    member_json,
    message_json,
    new_invite_url,
    read_params,
    user_json,
)

__all__ = [
    "DEFAULT_BOT_RIGHTS",
    "JSON",
    "NO_INVITE_RIGHTS",
    "OPT_IN_UPDATES",
    "POLL_CONFLICT",
    "WEBHOOK_CONFLICT",
    "ApiError",
    "Call",
    "chat_full_info_json",
    "chat_json",
    "decode_value",
    "invite_link_json",
    "mask_invite_url",
    "member_json",
    "message_json",
    "new_invite_url",
    "read_params",
    "user_json",
]
