"""A channel's join event: the one rule (a Purchase has a value and currency),
how /event's words are read, and which setting a join is reported with."""

from __future__ import annotations

import re

import pytest

from bot.adtarget.events import (
    PURCHASE_NEEDS_VALUE,
    EventType,
    JoinEvent,
    effective_event,
    parse_join_event,
    refusal,
)
from bot.joins.conversion import conversion_body
from storage.channels import Channel

PURCHASE = EventType("Purchase")
LEAD = EventType("Lead")


def channel(**fields: object) -> Channel:
    base: dict[str, object] = {
        "chat_id": -1001,
        "title": "Shop",
        "username": None,
        "active": True,
        "can_invite_users": True,
        "event_type": None,
        "mode": "link",
        "adtarget_channel_id": None,
    }
    return Channel(**{**base, **fields})  # type: ignore[arg-type]


def test_a_purchase_without_a_value_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(PURCHASE_NEEDS_VALUE)}$"):
        JoinEvent(PURCHASE)
    assert "ad platforms drop a Purchase without a value" in PURCHASE_NEEDS_VALUE


@pytest.mark.parametrize(
    ("value", "currency", "why"),
    [
        (9.99, None, "currency: (required with a value|a Purchase needs an ISO 4217)"),
        (9.99, "EURO", "currency: must be an ISO 4217 code"),
        (9.99, "eur", "currency: must be an ISO 4217 code"),
        (0.0, "EUR", "the value must be more than 0, not 0"),
        (-5.0, "EUR", "the value must be more than 0, not -5"),
        (float("inf"), "EUR", "value: Input should be a finite number"),
    ],
)
def test_a_value_follows_adtargets_rules(value: float, currency: str | None, why: str) -> None:
    for event in (PURCHASE, LEAD):
        with pytest.raises(ValueError, match=why):
            JoinEvent(event, value, currency)


def test_fields_and_text_of_an_event_with_and_without_a_value() -> None:
    purchase = JoinEvent(PURCHASE, 9.99, "EUR")
    assert purchase.as_fields() == {"eventType": "Purchase", "value": 9.99, "currency": "EUR"}
    assert str(purchase) == "Purchase 9.99 EUR"
    assert JoinEvent(PURCHASE, 1234567.5, "USD").worth == "1234567.5 USD"  # never 1.23e+06
    assert JoinEvent(PURCHASE, 10.0, "USD").worth == "10 USD"
    lead = JoinEvent(LEAD)
    assert lead.as_fields() == {"eventType": "Lead"}
    assert (str(lead), lead.worth) == ("Lead", "")
    custom = JoinEvent(EventType("Custom", "Paid"), 5, "GBP")
    assert custom.as_fields() == {
        "eventType": "Custom",
        "customEventName": "Paid",
        "value": 5,
        "currency": "GBP",
    }


@pytest.mark.parametrize(
    ("words", "channel_words", "event"),
    [
        ("Shop Purchase 9.99 EUR", ["Shop"], JoinEvent(PURCHASE, 9.99, "EUR")),
        ("My Shop Purchase 9,99 eur", ["My", "Shop"], JoinEvent(PURCHASE, 9.99, "EUR")),
        ("Shop Lead", ["Shop"], JoinEvent(LEAD)),
        ("@shop Lead 3 USD", ["@shop"], JoinEvent(LEAD, 3, "USD")),
        ("Shop Custom:Level 2 Done", ["Shop"], JoinEvent(EventType("Custom", "Level 2 Done"))),
        (
            "Shop Custom:Paid Plan 20 EUR",
            ["Shop"],
            JoinEvent(EventType("Custom", "Paid Plan"), 20, "EUR"),
        ),
    ],
)
def test_event_words_are_read_from_the_end(
    words: str, channel_words: list[str], event: JoinEvent
) -> None:
    assert parse_join_event(words.split()) == (channel_words, event)


@pytest.mark.parametrize(
    ("words", "why"),
    [
        ("Shop Purchase", PURCHASE_NEEDS_VALUE),
        ("Shop Purchase 9.99", "the value and the currency go together"),
        ("Shop Purchase EUR 9.99", "the value and the currency go together"),
        ("Shop Purchase 9.99 euro", "currency: must be an ISO 4217 code"),
        ("Shop Purchase 1e3 EUR", "unknown event type"),
        ("Shop Visit", "unknown event type 'Visit'"),
        ("Purchase", "name the channel and the event"),
        ("", "name the channel and the event"),
    ],
)
def test_event_words_refused_say_why(words: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_join_event(words.split())


def test_the_effective_event_skips_a_valueless_purchase() -> None:
    default = EventType("Subscribe")
    assert effective_event(channel(), default) == JoinEvent(default)
    own = channel(event_type="Purchase", event_value=9.99, event_currency="EUR")
    assert effective_event(own, default) == JoinEvent(PURCHASE, 9.99, "EUR")
    # A row from before the rule: Purchase, no value; AdTarget's setting, then the default.
    old = channel(event_type="Purchase", adtarget_event_type="CompleteRegistration")
    assert effective_event(old, default) == JoinEvent(EventType("CompleteRegistration"))
    assert effective_event(channel(event_type="Purchase"), default) == JoinEvent(default)
    assert effective_event(channel(adtarget_event_type="Purchase"), default) == JoinEvent(default)
    # AdTarget's Purchase is taken when the channel has a value for it.
    valued = channel(adtarget_event_type="Purchase", event_value=2.0, event_currency="USD")
    assert effective_event(valued, default) == JoinEvent(PURCHASE, 2.0, "USD")


def test_refusal_names_what_the_rule_refuses_only() -> None:
    assert refusal("Purchase", channel()) == PURCHASE_NEEDS_VALUE
    assert refusal("Purchase", channel(event_value=1.0, event_currency="EUR")) is None
    assert refusal("Lead", channel()) is None
    assert refusal(None, channel()) is None
    assert refusal("NoSuchEvent", channel()) is None  # read as none elsewhere


def test_the_conversion_body_carries_the_value() -> None:
    body = conversion_body(
        telegram_user_id=7,
        channel_id="ch",
        event=JoinEvent(PURCHASE, 9.99, "EUR"),
        joined_at=1,
        visit=None,
    )
    assert body == {
        "telegramUserId": 7,
        "channelId": "ch",
        "eventType": "Purchase",
        "value": 9.99,
        "currency": "EUR",
        "eventTime": 1000,
    }
