"""AdTarget event types as a channel owner names them (`Lead`, `Custom:Retained7d`),
and a channel's join event: its type with the value and currency a Purchase needs.

`JoinEvent` is the one rule for what a channel may report for each join: every
path that sets or reads a channel's event (/event, the AdTarget channel sync,
the joins) goes through it, so a valueless Purchase is refused where it is set
and never sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bot.adtarget.models import LeadEventRequest, describe_invalid
from bot.logs import ids
from storage.channels import Channel

log = logging.getLogger(__name__)

STANDARD_EVENTS = ("Lead", "Purchase", "CompleteRegistration", "Subscribe")
_CUSTOM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}$")
_AMOUNT = re.compile(r"-?[0-9.,]+")
# Why a Purchase without a value is refused, in the owner's words.
PURCHASE_NEEDS_VALUE = (
    "a Purchase needs a value and currency (like Purchase 9.99 EUR):"
    " ad platforms drop a Purchase without a value"
)


@dataclass(frozen=True, slots=True)
class EventType:
    """`name` is AdTarget's eventType; `custom_name` is set only for `Custom`."""

    name: str
    custom_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> EventType:
        text = text.strip()
        if text in STANDARD_EVENTS:
            return cls(text)
        if text.startswith("Custom:"):
            custom = text.removeprefix("Custom:").strip()
            if not _CUSTOM_NAME.match(custom):
                raise ValueError(
                    "a custom event name is 1-64 letters, digits, spaces, '_', '.' or '-'"
                )
            return cls("Custom", custom)
        allowed = ", ".join((*STANDARD_EVENTS, "Custom:<Name>"))
        raise ValueError(f"unknown event type {text!r}; use one of {allowed}")

    def __str__(self) -> str:
        return f"Custom:{self.custom_name}" if self.custom_name else self.name

    def as_fields(self) -> dict[str, str]:
        """The eventType (and customEventName) fields of an AdTarget body."""
        if self.custom_name:
            return {"eventType": "Custom", "customEventName": self.custom_name}
        return {"eventType": self.name}


def parse_amount(text: str) -> float:
    """A typed amount: `19.99` or `19,99`. ValueError says what was expected."""
    try:
        amount = float(text.replace(",", ".")) if _AMOUNT.fullmatch(text) else None
    except ValueError:
        amount = None
    if amount is None:
        raise ValueError(f"a number like 19.99, not {text!r}")
    return amount


@dataclass(frozen=True, slots=True)
class JoinEvent:
    """What a channel reports for each join: the event type, and the value and
    currency (ISO 4217) that go with it. A Purchase has both (ad platforms drop
    one without a value); any other event may. Built only valid: the rules are
    AdTarget's own request model's (bot/adtarget/models.py), checked here."""

    event: EventType
    value: float | None = None
    currency: str | None = None

    def __post_init__(self) -> None:
        if self.event.name == "Purchase" and self.value is None:
            raise ValueError(PURCHASE_NEEDS_VALUE)
        if self.value is not None and self.value <= 0:
            raise ValueError(f"the value must be more than 0, not {self.value:g}")
        try:
            LeadEventRequest(
                event_type=self.event.name,
                custom_event_name=self.event.custom_name,
                value=self.value,
                currency=self.currency,
            )
        except ValidationError as error:
            raise ValueError(describe_invalid(error)) from None

    def __str__(self) -> str:
        """`Purchase 9.99 EUR`, as /event takes it."""
        return f"{self.event} {self.worth}" if self.worth else str(self.event)

    @property
    def worth(self) -> str:
        """`9.99 EUR`; empty without a value. Plain decimals: no `1e+06` for an owner."""
        if self.value is None:
            return ""
        return f"{f'{self.value:f}'.rstrip('0').rstrip('.')} {self.currency}"

    def as_fields(self) -> dict[str, Any]:
        """The eventType, customEventName, value and currency fields of an AdTarget body."""
        fields: dict[str, Any] = self.event.as_fields()
        if self.value is not None:
            fields["value"] = self.value
            fields["currency"] = self.currency
        return fields


def parse_join_event(words: Sequence[str]) -> tuple[list[str], JoinEvent]:
    """`<channel…> <event> [value currency]`: the words naming the channel, and the
    event. The channel may be a title of several words, so the event is found from
    the end: the word starting with `Custom:`, else the last word, or the third
    from last when the last two are a value and a currency. ValueError says why not.
    """
    words = list(words)
    start: int | None = next(
        (i for i, word in enumerate(words) if i > 0 and word.casefold().startswith("custom:")),
        None,
    )
    if start is None:
        amount_last = bool(words) and bool(_AMOUNT.fullmatch(words[-1]))
        if amount_last:
            raise ValueError("the value and the currency go together, like 9.99 EUR")
        valued = len(words) >= 4 and bool(_AMOUNT.fullmatch(words[-2]))
        start = len(words) - 3 if valued else len(words) - 1
    if start < 1:
        raise ValueError("name the channel and the event")
    tail = words[start:]
    value = currency = None
    # A custom name may hold a number ("Custom:Level 2 Done"): a value then
    # needs a currency of three letters after it.
    custom = tail[0].casefold().startswith("custom:")
    if (
        len(tail) >= 3
        and _AMOUNT.fullmatch(tail[-2])
        and (not custom or re.fullmatch(r"[A-Za-z]{3}", tail[-1]))
    ):
        value, currency = parse_amount(tail[-2]), tail[-1].upper()
        tail = tail[:-2]
    event = EventType.parse(" ".join(tail))
    return words[:start], JoinEvent(event, value, currency)


def effective_event(channel: Channel, default: EventType) -> JoinEvent:
    """The channel's own setting (/event), else AdTarget's for the channel, else
    DEFAULT_EVENT_TYPE; the channel's value and currency go with it. A setting the
    rule refuses (a Purchase stored without a value before the rule) is skipped."""
    for text in (channel.event_type, channel.adtarget_event_type):
        if text:
            try:
                return JoinEvent(EventType.parse(text), channel.event_value, channel.event_currency)
            except ValueError as error:
                log.warning(
                    "channel %d: ignoring event type %r: %s",
                    channel.chat_id,
                    text,
                    error,
                    extra=ids(chat_id=channel.chat_id),
                )
    return JoinEvent(default)


def refusal(text: str | None, channel: Channel) -> str | None:
    """Why `text` may not be this channel's join event with its value, or None:
    also None for no text or one that is no event type (read as none, with a
    warning, by `effective_event`)."""
    try:
        event = EventType.parse(text) if text else None
    except ValueError:
        return None
    if event is None:
        return None
    try:
        JoinEvent(event, channel.event_value, channel.event_currency)
    except ValueError as error:
        return str(error)
    return None
