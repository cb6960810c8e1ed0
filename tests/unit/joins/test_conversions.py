"""The conversion body: fields, units and the no-nulls rule."""

from __future__ import annotations

import pytest

from bot.adtarget.events import EventType
from bot.joins.conversion import conversion_body, conversion_key
from storage.visits import Attribution


def test_full_visit_maps_every_signal() -> None:
    visit = Attribution(
        temp_id="t",
        href="https://example.com/l?fbclid=AbC",
        fbc="fb.1.1700000000000.AbC",
        fbp="fb.1.1700000000000.123",
        gclid="g",
        ttclid="tt",
        sccid="sc",
        client_ip="203.0.113.42",
        user_agent="UA/1",
        external_user_id="ext-1",
        utm_source="meta",
    )
    body = conversion_body(
        telegram_user_id=42,
        channel_id="-1001",
        event=EventType("Subscribe"),
        joined_at=1_700_000_123,
        visit=visit,
        site_id="site-9",
    )
    assert body == {
        "telegramUserId": 42,
        "channelId": "-1001",
        "eventType": "Subscribe",
        "eventTime": 1_700_000_123_000,
        "fbc": "fb.1.1700000000000.AbC",
        "fbp": "fb.1.1700000000000.123",
        "gclid": "g",
        "ttclid": "tt",
        "sccid": "sc",
        "clientIp": "203.0.113.42",
        "userAgent": "UA/1",
        "eventSourceUrl": "https://example.com/l?fbclid=AbC",
        "externalUserId": "ext-1",
        "siteId": "site-9",
    }


def test_absent_and_empty_values_are_left_out() -> None:
    visit = Attribution(temp_id="t", fbc="", fbp=None, client_ip="198.51.100.1")
    body = conversion_body(
        telegram_user_id=1, channel_id="c", event=EventType("Lead"), joined_at=1, visit=visit
    )
    assert body == {
        "telegramUserId": 1,
        "channelId": "c",
        "eventType": "Lead",
        "eventTime": 1000,
        "clientIp": "198.51.100.1",
    }
    assert None not in body.values()


def test_custom_event_sends_its_name() -> None:
    body = conversion_body(
        telegram_user_id=1,
        channel_id="c",
        event=EventType.parse("Custom:Retained7d"),
        joined_at=1,
        visit=None,
    )
    assert body["eventType"] == "Custom"
    assert body["customEventName"] == "Retained7d"


def test_idempotency_key_is_stable_and_distinct() -> None:
    assert conversion_key(-1001, 5, 9, 100) == conversion_key(-1001, 5, 9, 200)
    assert conversion_key(-1001, 5, 9, 100) != conversion_key(-1001, 5, 10, 100)
    assert conversion_key(-1001, 5, None, 100) != conversion_key(-1001, 5, None, 101)
    assert len(conversion_key(-1009999999999, 9999999999, 10**12, 0)) <= 128


@pytest.mark.parametrize("text", ["Lead", "Subscribe", "CompleteRegistration", "Purchase"])
def test_standard_events_parse(text: str) -> None:
    assert str(EventType.parse(text)) == text


@pytest.mark.parametrize("text", ["lead", "Custom:", "Custom:bad/name", "Visit"])
def test_bad_events_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="event"):
        EventType.parse(text)
