"""How each AdTarget answer is classified, and the backoff schedule."""

from __future__ import annotations

import random

import httpx
import pytest

from bot.adtarget import errors
from bot.adtarget.client import ApiAnswer, parse_retry_after
from bot.courier.verdicts import (
    Accepted,
    CourierConfig,
    Verdict,
    classify_answer,
    classify_exception,
    find_matching_conversion,
    verdict_of,
)
from storage.outbox import OutboxRow


def answer(status: int, code: str | None = None, retry_after: float | None = None) -> ApiAnswer:
    body = {"error": {"code": code, "message": "m"}} if code else {"conversionId": "c1"}
    return ApiAnswer(status=status, body=body, retry_after=retry_after, replay=False)


@pytest.mark.parametrize(
    ("status", "code", "verdict"),
    [
        (200, None, Verdict.DELIVERED),
        (201, None, Verdict.DELIVERED),
        (400, "INVALID_PAYLOAD", Verdict.PARK),
        (404, "CHANNEL_NOT_FOUND", Verdict.PARK),
        (401, "INVALID_KEY", Verdict.PAUSE_AUTH),
        (401, "REVOKED_KEY", Verdict.PAUSE_AUTH),
        (402, "SUBSCRIPTION_INACTIVE", Verdict.PAUSE_BILLING),
        (429, "RATE_LIMITED", Verdict.RATE_LIMITED),
        (500, "INTERNAL_ERROR", Verdict.RETRY),
        (502, None, Verdict.RETRY),
        (503, "API_DISABLED", Verdict.RETRY),
        (408, None, Verdict.RETRY),
        (403, "FORBIDDEN", Verdict.PARK),
    ],
)
def test_classify_answer(status: int, code: str | None, verdict: Verdict) -> None:
    assert classify_answer(answer(status, code)).verdict is verdict


@pytest.mark.parametrize("status", [400, 402, 404, 408, 429, 502])
@pytest.mark.parametrize("code", [None, "TEAPOT", "INVALID_PAYLOAD", "REVOKED_KEY", "RATE_LIMITED"])
def test_the_courier_reads_an_answer_as_the_client_does(status: int, code: str | None) -> None:
    """One table: the verdict follows from the error the typed client would raise."""
    error = errors.error_from_answer(status, answer(status, code).body, None)
    verdict = classify_answer(answer(status, code)).verdict
    assert verdict is verdict_of(error)
    if verdict in (Verdict.RETRY, Verdict.RATE_LIMITED, Verdict.PAUSE_BILLING):
        assert error.retryable


@pytest.mark.parametrize(
    ("body", "dispatched", "warning"),
    [
        ({"capiStatus": "pending", "dispatched": True}, True, None),
        (
            {"capiStatus": "skipped", "dispatched": False, "warning": "No signal"},
            False,
            "No signal",
        ),
        # An answer without dispatched: capiStatus says the same.
        ({"capiStatus": "skipped", "warning": "No signal"}, False, "No signal"),
        ({"capiStatus": "pending"}, True, None),
        ({"capiStatus": "queued"}, None, None),
        ({"success": True}, None, None),  # not a conversion's answer
        ("not an object", None, None),
    ],
)
def test_what_adtarget_did_with_a_conversion(
    body: object, dispatched: bool | None, warning: str | None
) -> None:
    accepted = Accepted.of(body)
    assert (accepted.dispatched, accepted.warning) == (dispatched, warning)


def test_park_reason_names_status_and_code() -> None:
    outcome = classify_answer(
        ApiAnswer(
            400,
            {"error": {"code": "INVALID_PAYLOAD", "message": "channelId: required"}},
            None,
            False,
        )
    )
    assert outcome.reason == "HTTP 400 INVALID_PAYLOAD: channelId: required"


def test_rate_limited_carries_retry_after() -> None:
    outcome = classify_answer(answer(429, "RATE_LIMITED", retry_after=7))
    assert outcome.retry_after == 7


def test_non_json_5xx_is_retried() -> None:
    outcome = classify_answer(ApiAnswer(502, None, None, False))
    assert outcome.verdict is Verdict.RETRY
    assert outcome.reason == "HTTP 502"


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("dropped"),
    ],
)
def test_transport_errors_are_retried(error: Exception) -> None:
    assert classify_exception(error).verdict is Verdict.RETRY


def test_backoff_doubles_from_base_and_is_capped() -> None:
    rng = random.Random(1)
    backoff = CourierConfig(backoff_base=1, backoff_cap=60).backoff
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (30, 60)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        # Jitter: the delays are spread, not all equal.
        assert max(delays) - min(delays) > ceiling / 10


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), (" 12 ", 12.0), ("0", 0.0), (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def _row(kind: str, path: str, body: dict[str, object], event_time_ms: int | None) -> OutboxRow:
    return OutboxRow(
        id=1,
        kind=kind,
        path=path,
        body=body,
        headers={},
        idempotency_key="k",
        telegram_user_id=42,
        chat_id=None,
        event_type=None,
        event_time_ms=event_time_ms,
        attempts=2,
        first_attempt_at=0.0,
        created_at=0.0,
    )


T = 1_764_100_000_000  # 2025-11-25T19:46:40Z in ms
LEAD = {
    "telegramUserId": "42",
    "conversions": [
        {"conversionId": "c1", "channelId": "ch1", "eventType": "Lead", "attributedAt": T + 1_000},
        {
            "conversionId": "c2",
            "channelId": "ch1",
            "eventType": "Purchase",
            "attributedAt": "2025-11-25T19:46:45Z",
            "eventValue": 9.5,
        },
        {
            "conversionId": "c3",
            "channelId": "ch1",
            "eventType": "Subscribe",
            "attributedAt": T + 6_000,
        },
    ],
}


@pytest.mark.parametrize(
    ("row", "found"),
    [
        # A conversion: channel, event type and time must all fit.
        (
            _row(
                "conversion",
                "/events/conversion",
                {"channelId": "ch1", "eventType": "Lead"},
                T + 900,
            ),
            "c1",
        ),
        (
            _row(
                "conversion",
                "/events/conversion",
                {"channelId": "ch2", "eventType": "Lead"},
                T + 900,
            ),
            None,
        ),
        (
            _row(
                "conversion",
                "/events/conversion",
                {"channelId": "ch1", "eventType": "Lead"},
                T + 2_000,
            ),
            None,
        ),
        # A follow-up event may leave the channel to AdTarget.
        (_row("lead_event", "/leads/42/events", {"eventType": "Purchase"}, T + 5_000), "c2"),
        (_row("lead_event", "/leads/42/events", {"eventType": "Purchase"}, T + 5_001), None),
        (_row("lead_event", "/leads/42/events", {"eventType": "CompleteRegistration"}, T), None),
        # A value: the named conversion already carries one.
        (_row("conversion_value", "/leads/42/conversions/c2/value", {"value": 9.5}, None), "c2"),
        (_row("conversion_value", "/leads/42/conversions/c3/value", {"value": 1}, None), None),
    ],
)
def test_what_adtarget_already_holds(row: OutboxRow, found: str | None) -> None:
    assert find_matching_conversion(LEAD, row) == found
