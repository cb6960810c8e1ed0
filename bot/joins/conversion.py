"""The conversion body AdTarget receives for a join: only fields that have values."""

from __future__ import annotations

from typing import Any

from bot.adtarget.events import EventType, JoinEvent
from storage.visits import Attribution

CONVERSION_PATH = "/events/conversion"

# Visit column -> AdTarget field, in the order AdTarget documents them.
_SIGNALS = (
    ("fbc", "fbc"),
    ("fbp", "fbp"),
    ("gclid", "gclid"),
    ("ttclid", "ttclid"),
    ("sccid", "sccid"),
    ("client_ip", "clientIp"),
    ("user_agent", "userAgent"),
    ("href", "eventSourceUrl"),
    ("external_user_id", "externalUserId"),
)


def conversion_body(
    *,
    telegram_user_id: int,
    channel_id: str,
    event: EventType | JoinEvent,
    joined_at: int,
    visit: Attribution | None,
    campaign: str | None = None,
    site_id: str | None = None,
) -> dict[str, Any]:
    """`joined_at` is Telegram's date in seconds; AdTarget wants milliseconds. A
    `JoinEvent` brings its value and currency (a Purchase always has them)."""
    body: dict[str, Any] = {
        "telegramUserId": telegram_user_id,
        "channelId": channel_id,
        **event.as_fields(),
        "eventTime": joined_at * 1000,
    }
    if visit is not None:
        for column, field in _SIGNALS:
            value = getattr(visit, column)
            if value:
                body[field] = value
    if campaign:
        body["contentName"] = campaign
    if site_id:
        body["siteId"] = site_id
    return body


def conversion_key(chat_id: int, user_id: int, link_id: int | None, joined_at: int) -> str:
    """The Idempotency-Key: derived from the join's natural key, so it is the same
    on every retry and even if the row were ever written again."""
    anchor = f"l{link_id}" if link_id is not None else f"t{joined_at}"
    return f"jb-conversion-{chat_id}-{user_id}-{anchor}"
