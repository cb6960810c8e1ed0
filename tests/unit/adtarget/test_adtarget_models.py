"""The request and answer models keep the rules of /work/shared/adtarget-api.md."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bot.adtarget.models import (
    ConversionAnswer,
    ConversionRequest,
    InviteRequest,
    Lead,
    LeadEventRequest,
    UpdateFbpRequest,
    ValueRequest,
    VisitRequest,
    describe_invalid,
)


def refusal(model: type[Any], **fields: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        model(**fields)
    return describe_invalid(raised.value)


@pytest.mark.parametrize("event", ["Lead", "CompleteRegistration", "Subscribe"])
def test_standard_events_need_nothing_else(event: str) -> None:
    assert LeadEventRequest(event_type=event).body() == {"eventType": event}  # type: ignore[arg-type]


def test_event_type_is_one_of_the_documented_ones() -> None:
    text = refusal(LeadEventRequest, event_type="Visit")
    assert text.startswith("eventType: ")
    assert "'Purchase'" in text
    assert "'Custom'" in text


def test_custom_needs_its_name() -> None:
    assert refusal(LeadEventRequest, event_type="Custom") == (
        "customEventName: required when eventType is Custom"
    )
    body = LeadEventRequest(event_type="Custom", custom_event_name="Retained7d").body()
    assert body == {"eventType": "Custom", "customEventName": "Retained7d"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "value: a Purchase needs a value > 0"),
        ({"value": 0, "currency": "EUR"}, "value: a Purchase needs a value > 0"),
        ({"value": 10}, "currency: a Purchase needs an ISO 4217 currency"),
        ({"value": 10, "currency": "eur"}, "currency: must be an ISO 4217 code"),
        ({"value": 10, "currency": "EURO"}, "currency: must be an ISO 4217 code"),
        ({"value": -1, "currency": "EUR"}, "value: Input should be greater than or equal to 0"),
        ({"value": float("inf"), "currency": "EUR"}, "value: Input should be a finite number"),
    ],
)
def test_purchase_needs_a_positive_value_and_an_iso_currency(
    fields: dict[str, Any], message: str
) -> None:
    assert refusal(LeadEventRequest, event_type="Purchase", **fields).startswith(message)


def test_purchase_with_value_and_currency() -> None:
    body = LeadEventRequest(event_type="Purchase", value=19.99, currency="EUR").body()
    assert body == {"eventType": "Purchase", "value": 19.99, "currency": "EUR"}


def test_a_value_needs_a_currency_on_any_event() -> None:
    assert refusal(LeadEventRequest, event_type="Lead", value=3).startswith("currency: required")


def test_conversion_needs_user_and_channel_and_milliseconds() -> None:
    text = refusal(ConversionRequest, event_type="Lead")
    assert "telegramUserId: required" in text
    assert "channelId: required" in text
    assert "telegramUserId: " in refusal(
        ConversionRequest, event_type="Lead", channel_id="c", telegram_user_id=0
    )
    # eventTime is a whole number of milliseconds, never a float of seconds.
    assert refusal(
        ConversionRequest, event_type="Lead", channel_id="c", telegram_user_id=1, event_time=1.5
    ).startswith("eventTime: ")


def test_requests_refuse_unknown_fields_by_their_doc_name() -> None:
    assert refusal(LeadEventRequest, event_type="Lead", eventSource="x") == (
        "eventSource: not a field of this request"
    )
    # Both spellings of a known field are accepted; the wire uses the doc's.
    by_alias = LeadEventRequest.model_validate({"eventType": "Lead", "channelId": "ch"})
    assert by_alias.body() == {"eventType": "Lead", "channelId": "ch"}


def test_value_request() -> None:
    assert ValueRequest(value=5, currency="USD").body() == {"value": 5.0, "currency": "USD"}
    text = refusal(ValueRequest, value=0, currency="usd")
    assert "value: Input should be greater than 0" in text
    assert "currency: must be an ISO 4217 code" in text
    assert refusal(ValueRequest, currency="USD") == "value: required"


def test_visit_update_fbp_and_invite() -> None:
    assert refusal(VisitRequest) == "href: required"
    assert refusal(VisitRequest, href="/landing") == "href: must be an absolute http(s) URL"
    assert refusal(VisitRequest, href="https://a.example/", temp_id="x") == "tempId: must be a UUID"
    assert VisitRequest(href="https://a.example/", utm_term="t").body() == {
        "href": "https://a.example/",
        "utmTerm": "t",
    }
    assert refusal(UpdateFbpRequest, temp_id="t") == "fbp: required"
    assert refusal(InviteRequest, temp_id="t", channel_id="") == (
        "channelId: String should have at least 1 character"
    )


def test_answers_tolerate_new_fields_but_need_what_is_read() -> None:
    answer = ConversionAnswer.model_validate(
        {"conversionId": "c", "capiStatus": "pending", "dispatched": True, "brandNew": 1}
    )
    assert answer.sends == []
    with pytest.raises(ValidationError):
        ConversionAnswer.model_validate({"capiStatus": "pending"})
    lead = Lead.model_validate({"telegramUserId": 5, "firstSeenAt": 1_700_000_000_000})
    assert lead.conversions == []
    assert lead.first_seen_at == 1_700_000_000_000
