"""The conversion body AdTarget receives for a join: only fields that have values."""

from __future__ import annotations

from typing import Any

from bot.adtarget.events import EventType, JoinEvent
from bot.adtarget.models import ConversionRequest
from storage.visits import Attribution


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
    `JoinEvent` brings its value and currency (a Purchase always has them); the
    visit its attribution signals (empty ones count as absent)."""
    kind = event.event if isinstance(event, JoinEvent) else event
    worth = event if isinstance(event, JoinEvent) else None
    signals = visit or Attribution(temp_id="")
    return ConversionRequest(
        telegram_user_id=telegram_user_id,
        channel_id=channel_id,
        event_type=kind.name,
        custom_event_name=kind.custom_name,
        value=worth.value if worth else None,
        currency=worth.currency if worth else None,
        content_name=campaign or None,
        external_user_id=signals.external_user_id or None,
        event_time=joined_at * 1000,
        fbc=signals.fbc or None,
        fbp=signals.fbp or None,
        gclid=signals.gclid or None,
        ttclid=signals.ttclid or None,
        sccid=signals.sccid or None,
        client_ip=signals.client_ip or None,
        user_agent=signals.user_agent or None,
        event_source_url=signals.href or None,
        site_id=site_id or None,
    ).body()


def conversion_key(chat_id: int, user_id: int, link_id: int | None, joined_at: int) -> str:
    """The Idempotency-Key: derived from the join's natural key, so it is the same
    on every retry and even if the row were ever written again."""
    anchor = f"l{link_id}" if link_id is not None else f"t{joined_at}"
    return f"jb-conversion-{chat_id}-{user_id}-{anchor}"
