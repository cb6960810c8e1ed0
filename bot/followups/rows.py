"""Follow-ups for an existing lead, queued through the outbox.

Another event for the lead (POST /leads/{id}/events) or a value for a
conversion awaiting one (POST /leads/{id}/conversions/{cid}/value). Both are
checked against the request models *before* anything is queued, so a bad
argument is refused at once with the field and the reason, never parked later.
The courier delivers the row like any other, with the row's Idempotency-Key.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from bot.adtarget import events
from bot.adtarget.events import EventType
from bot.adtarget.models import LeadEventRequest, ValueRequest, describe_invalid
from bot.ops import privacy
from storage import outbox
from storage.db import Database

KIND_EVENT = "lead_event"
KIND_VALUE = "conversion_value"
MAX_KEY = 128  # AdTarget's limit on Idempotency-Key
_KEY = re.compile(r"[\x21-\x7e]+")
_CONVERSION_ID = re.compile(r"[A-Za-z0-9_.:~-]{1,128}")


class InvalidFollowUp(ValueError):
    """A follow-up that AdTarget would refuse; str() names the field and why."""


@dataclass(frozen=True, slots=True)
class Queued:
    row_id: int | None  # None: a row with this Idempotency-Key was queued before
    idempotency_key: str


def parse_user_id(text: str) -> int:
    """The one rule for a typed Telegram user id (bot/privacy), named as this argument."""
    try:
        return privacy.parse_user_id(text)
    except ValueError as error:
        raise InvalidFollowUp(f"telegram-user-id: {error}") from None


def parse_amount(text: str) -> float:
    try:
        return events.parse_amount(text)
    except ValueError as error:
        raise InvalidFollowUp(f"value: {error}") from None


def check_conversion_id(text: str) -> str:
    if not _CONVERSION_ID.fullmatch(text):
        raise InvalidFollowUp(
            f"conversion-id: AdTarget's id as /lead shows it (letters, digits, '-'), not {text!r}"
        )
    return text


def event_request(
    event: EventType | str,
    *,
    value: float | None = None,
    currency: str | None = None,
    channel_id: str | None = None,
    event_time_ms: int | None = None,
) -> LeadEventRequest:
    """The /leads/{id}/events body, validated; `event` may be "Custom:Name"."""
    if isinstance(event, str):
        try:
            event = EventType.parse(event)
        except ValueError as error:
            raise InvalidFollowUp(f"event: {error}") from None
    try:
        return LeadEventRequest(
            event_type=event.name,
            custom_event_name=event.custom_name,
            value=value,
            currency=currency,
            channel_id=channel_id,
            event_time=event_time_ms if event_time_ms is not None else int(time.time() * 1000),
        )
    except ValidationError as error:
        raise InvalidFollowUp(describe_invalid(error)) from None


def value_request(value: float, currency: str) -> ValueRequest:
    try:
        return ValueRequest(value=value, currency=currency)
    except ValidationError as error:
        raise InvalidFollowUp(describe_invalid(error)) from None


def check_idempotency_key(text: str) -> str:
    """A caller's own key (a payment id, say): it goes out as an HTTP header as is."""
    if not 0 < len(text) <= MAX_KEY:
        raise InvalidFollowUp(f"idempotency key: 1-{MAX_KEY} characters, got {len(text)}")
    if not _KEY.fullmatch(text):
        raise InvalidFollowUp(
            f"idempotency key: printable ASCII without spaces (a header value), not {text!r}"
        )
    return text


def _check_user(telegram_user_id: int) -> None:
    if telegram_user_id <= 0:
        raise InvalidFollowUp("telegram-user-id: must be a positive whole number")


def _key(given: str | None, prefix: str) -> str:
    return check_idempotency_key(given if given is not None else f"{prefix}-{uuid.uuid4()}")


def event_row(
    telegram_user_id: int,
    request: LeadEventRequest,
    *,
    idempotency_key: str | None = None,
    chat_id: int | None = None,
) -> outbox.NewRow:
    """The outbox row for an event; for callers that queue it in their own transaction."""
    _check_user(telegram_user_id)
    event_type: str = request.event_type
    if request.custom_event_name:
        event_type = f"Custom:{request.custom_event_name}"
    call = request.call(telegram_user_id)
    return outbox.NewRow(
        kind=KIND_EVENT,
        path=call.path,
        body=call.body,
        idempotency_key=_key(idempotency_key, "jb-fire"),
        telegram_user_id=telegram_user_id,
        chat_id=chat_id,
        event_type=event_type,
        event_time_ms=request.event_time,
    )


def value_row(
    telegram_user_id: int,
    conversion_id: str,
    request: ValueRequest,
    *,
    idempotency_key: str | None = None,
    chat_id: int | None = None,
) -> outbox.NewRow:
    _check_user(telegram_user_id)
    call = request.call(telegram_user_id, check_conversion_id(conversion_id))
    return outbox.NewRow(
        kind=KIND_VALUE,
        path=call.path,
        body=call.body,
        idempotency_key=_key(idempotency_key, "jb-value"),
        telegram_user_id=telegram_user_id,
        chat_id=chat_id,
    )


async def queue(db: Database, row: outbox.NewRow, wake: Callable[[], None] | None = None) -> Queued:
    async with db.transaction() as tx:
        row_id = await outbox.enqueue(tx, row)
    if wake is not None:
        wake()
    return Queued(row_id, row.idempotency_key)


async def queue_event(
    db: Database,
    telegram_user_id: int,
    event: EventType | str,
    *,
    value: float | None = None,
    currency: str | None = None,
    channel_id: str | None = None,
    chat_id: int | None = None,
    event_time_ms: int | None = None,
    idempotency_key: str | None = None,
    wake: Callable[[], None] | None = None,
) -> Queued:
    """Validate, then queue POST /leads/{id}/events. A given `idempotency_key`
    makes a repeat a no-op (Queued.row_id None); without one each call is new.
    Raises InvalidFollowUp before anything is written."""
    request = event_request(
        event, value=value, currency=currency, channel_id=channel_id, event_time_ms=event_time_ms
    )
    row = event_row(telegram_user_id, request, idempotency_key=idempotency_key, chat_id=chat_id)
    return await queue(db, row, wake)


async def queue_value(
    db: Database,
    telegram_user_id: int,
    conversion_id: str,
    value: float,
    currency: str,
    *,
    chat_id: int | None = None,
    idempotency_key: str | None = None,
    wake: Callable[[], None] | None = None,
) -> Queued:
    """Validate, then queue POST /leads/{id}/conversions/{cid}/value."""
    row = value_row(
        telegram_user_id,
        conversion_id,
        value_request(value, currency),
        idempotency_key=idempotency_key,
        chat_id=chat_id,
    )
    return await queue(db, row, wake)
