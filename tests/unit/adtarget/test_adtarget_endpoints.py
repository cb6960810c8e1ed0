"""The typed AdTarget client: every endpoint, every documented error, Retry-After and
the header-over-body rule, over httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.adtarget import errors, wire
from bot.adtarget.client import AdTargetClient
from bot.adtarget.models import (
    ConversionAnswer,
    ConversionRequest,
    InviteAnswer,
    InviteRequest,
    LeadEventRequest,
    Pii,
    SuccessAnswer,
    UpdateFbpRequest,
    ValueRequest,
    VisitAnswer,
    VisitRequest,
)
from bot.adtarget.wire import visitor_headers
from tests.unit.adtarget.sending import send

KEY = "atk_live_abcd1234_0123456789abcdefghijklmnopqrstuv"
BASE = "https://adtarget.example"


class Recorder:
    """A MockTransport handler answering a fixed response and keeping the requests."""

    def __init__(self, response: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.response, httpx.Response):
            return self.response
        return self.response(request)

    @property
    def only(self) -> httpx.Request:
        (request,) = self.requests
        return request

    def body(self) -> Any:
        return json.loads(self.only.content)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(httpx.Response(200, json={}))


@pytest.fixture
async def client(recorder: Recorder) -> AsyncIterator[AdTargetClient]:
    api = AdTargetClient(BASE, SecretStr(KEY), transport=httpx.MockTransport(recorder))
    yield api
    await api.aclose()


def answer(recorder: Recorder, payload: Any, status: int = 200, **headers: str) -> None:
    recorder.response = httpx.Response(status, json=payload, headers=headers)


CONVERSION_ANSWER = {
    "conversionId": "cv_1",
    "capiStatus": "pending",
    "coldLead": True,
    "dispatched": True,
    "sends": [{"sendId": "s_1", "platform": "meta"}],
}


async def test_visit(client: AdTargetClient, recorder: Recorder) -> None:
    cookie = {"name": "adtarget_temp_id", "value": "t", "maxAge": 31536000, "sameSite": "Lax"}
    answer(
        recorder,
        {
            "visitId": "v_1",
            "sessionId": "s_1",
            "tempId": "6f1c2a9e-5d1b-4c61-9d0a-3b1f8f7a2e10",
            "clientSessionId": "cs_1",
            "cookies": {"tempId": cookie, "session": {**cookie, "maxAge": 1800}},
        },
    )
    visit = VisitRequest(
        href="https://yoursite.com/landing?fbclid=AbCd",
        fbc="fb.1.1700000000.AbCd",
        utm_source="meta",
    )
    result = await send(client, visit.call("203.0.113.42"), "jb-visit-1", VisitAnswer)
    request = recorder.only
    assert str(request.url) == f"{BASE}/api/v1/events/visit"
    assert request.headers["Idempotency-Key"] == "jb-visit-1"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["X-Adtarget-Client-IP"] == "203.0.113.42"
    assert recorder.body() == {
        "href": "https://yoursite.com/landing?fbclid=AbCd",
        "fbc": "fb.1.1700000000.AbCd",
        "utmSource": "meta",
    }
    assert result.visit_id == "v_1"
    assert result.cookies is not None
    assert result.cookies.session.max_age == 1800


async def test_header_wins_over_body_for_client_ip_and_user_agent(
    client: AdTargetClient, recorder: Recorder
) -> None:
    answer(recorder, {"visitId": "v", "sessionId": "s", "tempId": "t", "clientSessionId": "c"})
    visit = VisitRequest(href="https://a.example/", client_ip="198.51.100.7", user_agent="Body/1")
    await send(client, visit.call("203.0.113.42", "Header/2"), "k", VisitAnswer)
    request = recorder.only
    assert request.headers["X-Adtarget-Client-IP"] == "203.0.113.42"
    assert request.headers["X-Adtarget-Client-User-Agent"] == "Header/2"
    # One value per field: the losing body values are not sent to contradict it.
    assert "clientIp" not in recorder.body()
    assert "userAgent" not in recorder.body()


def test_body_values_travel_as_headers_when_no_header_is_given() -> None:
    body, headers = visitor_headers(
        {"href": "h", "clientIp": "198.51.100.7", "userAgent": "Body/1"}, None, None
    )
    assert body == {"href": "h"}
    assert headers == {
        "X-Adtarget-Client-IP": "198.51.100.7",
        "X-Adtarget-Client-User-Agent": "Body/1",
    }
    body, headers = visitor_headers({"href": "h", "userAgent": "Body/1"}, "203.0.113.1", None)
    assert headers == {
        "X-Adtarget-Client-IP": "203.0.113.1",
        "X-Adtarget-Client-User-Agent": "Body/1",
    }
    assert visitor_headers({"href": "h"}, None, None) == ({"href": "h"}, {})


async def test_update_fbp_and_invite_forward_the_visitor(
    client: AdTargetClient, recorder: Recorder
) -> None:
    answer(recorder, {"success": True})
    done = await send(
        client,
        UpdateFbpRequest(temp_id="t-1", fbp="fb.1.2.3").call(user_agent="Mozilla/5.0"),
        "k1",
        SuccessAnswer,
    )
    assert done.success is True
    assert str(recorder.only.url).endswith("/api/v1/events/update-fbp")
    assert recorder.body() == {"tempId": "t-1", "fbp": "fb.1.2.3"}
    assert recorder.only.headers["X-Adtarget-Client-User-Agent"] == "Mozilla/5.0"

    recorder.requests.clear()
    answer(recorder, {"inviteLink": "https://t.me/+abc"})
    link = await send(
        client,
        InviteRequest(temp_id="t-1", channel_id="-1001234567890").call("203.0.113.5"),
        "k2",
        InviteAnswer,
    )
    assert link.invite_link == "https://t.me/+abc"
    assert str(recorder.only.url).endswith("/api/v1/events/invite")
    assert recorder.body() == {"tempId": "t-1", "channelId": "-1001234567890"}
    assert recorder.only.headers["X-Adtarget-Client-IP"] == "203.0.113.5"


async def test_conversion(client: AdTargetClient, recorder: Recorder) -> None:
    answer(recorder, {**CONVERSION_ANSWER, "unknownNewField": 1})
    conversion = ConversionRequest(
        telegram_user_id=42,
        channel_id="-1001234567890",
        event_type="Custom",
        custom_event_name="Retained7d",
        event_time=1_700_000_000_123,
        fbc="fb.1.1.x",
        event_source_url="https://a.example/",
        pii=Pii(email="a@example.com"),
    )
    result = await send(client, conversion.call(), "jb-conversion-1", ConversionAnswer)
    assert str(recorder.only.url).endswith("/api/v1/events/conversion")
    assert recorder.only.headers["Content-Type"] == "application/json"
    assert recorder.body() == {
        "eventType": "Custom",
        "customEventName": "Retained7d",
        "pii": {"email": "a@example.com"},
        "eventTime": 1_700_000_000_123,
        "fbc": "fb.1.1.x",
        "eventSourceUrl": "https://a.example/",
        "telegramUserId": 42,
        "channelId": "-1001234567890",
    }
    assert result.conversion_id == "cv_1"
    assert result.cold_lead is True
    assert result.sends[0].platform == "meta"
    assert result.warning is None


async def test_lead_event(client: AdTargetClient, recorder: Recorder) -> None:
    answer(
        recorder,
        {**CONVERSION_ANSWER, "capiStatus": "skipped", "dispatched": False, "warning": "no pixel"},
    )
    event = LeadEventRequest(event_type="Purchase", value=19.99, currency="EUR")
    result = await send(client, event.call(42), "jb-fire-1", ConversionAnswer)
    assert str(recorder.only.url) == f"{BASE}/api/v1/leads/42/events"
    assert recorder.only.headers["Idempotency-Key"] == "jb-fire-1"
    assert recorder.body() == {"eventType": "Purchase", "value": 19.99, "currency": "EUR"}
    assert result.dispatched is False
    assert result.warning == "no pixel"


async def test_value(client: AdTargetClient, recorder: Recorder) -> None:
    answer(recorder, {"success": True})
    result = await send(
        client,
        ValueRequest(value=5, currency="USD").call(42, "cv/1"),
        "jb-value-1",
        SuccessAnswer,
    )
    # The conversion id is one path segment whatever it contains.
    assert recorder.only.url.raw_path == b"/api/v1/leads/42/conversions/cv%2F1/value"
    assert recorder.body() == {"value": 5.0, "currency": "USD"}
    assert result.success is True


async def test_get_lead(client: AdTargetClient, recorder: Recorder) -> None:
    answer(
        recorder,
        {
            "telegramUserId": 42,
            "firstSeenAt": "2024-01-02T03:04:05.678Z",
            "lastSeenAt": "2024-01-03T03:04:05.678Z",
            "conversions": [
                {
                    "conversionId": "cv_1",
                    "channelId": 77,
                    "eventType": "Purchase",
                    "capiStatus": "pending",
                    "attributedAt": "2024-01-02T03:04:05.678Z",
                    "eventValue": 19.99,
                    "eventCurrency": "EUR",
                    "source": "api",
                }
            ],
        },
    )
    lead = await client.get_lead(42)
    assert recorder.only.method == "GET"
    assert str(recorder.only.url) == f"{BASE}/api/v1/leads/42"
    assert lead.telegram_user_id == 42
    assert lead.external_user_id is None
    (conversion,) = lead.conversions
    assert conversion.channel_id == "77"  # numbers are kept as text ids
    assert conversion.event_value == 19.99
    assert conversion.source == "api"


async def test_list_channels(client: AdTargetClient, recorder: Recorder) -> None:
    answer(
        recorder,
        {
            "channels": [
                {
                    "channelId": "ch_1",
                    "telegramChannelId": "-1001234567890",
                    "title": "One",
                    "funnelOrder": 1,
                    "eventType": "Subscribe",
                },
                {"channelId": "ch_2", "telegramChannelId": "-1002", "title": "Two"},
            ]
        },
    )
    found = await client.list_channels()
    assert str(recorder.only.url) == f"{BASE}/api/v1/channels"
    assert [(c.channel_id, c.telegram_channel_id, c.event_type) for c in found] == [
        ("ch_1", "-1001234567890", "Subscribe"),
        ("ch_2", "-1002", None),
    ]


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "INVALID_PAYLOAD", errors.InvalidPayload),
        (401, "AUTH_REQUIRED", errors.AuthError),
        (401, "INVALID_KEY", errors.AuthError),
        (401, "REVOKED_KEY", errors.AuthError),
        (402, "SUBSCRIPTION_INACTIVE", errors.SubscriptionInactive),
        (404, "CHANNEL_NOT_FOUND", errors.ChannelNotFound),
        (404, "LEAD_NOT_FOUND", errors.LeadNotFound),
        (404, "CONVERSION_NOT_FOUND", errors.ConversionNotFound),
        (429, "RATE_LIMITED", errors.RateLimited),
        (500, "INTERNAL_ERROR", errors.InternalError),
        (503, "API_DISABLED", errors.ApiDisabled),
    ],
)
async def test_every_documented_error_code(
    client: AdTargetClient, recorder: Recorder, status: int, code: str, kind: type[Exception]
) -> None:
    assert code in errors.ErrorCode.__members__
    answer(recorder, {"error": {"code": code, "message": "as documented", "field": "x"}}, status)
    with pytest.raises(kind) as raised:
        await client.get_lead(7)
    error = raised.value
    assert isinstance(error, errors.AdTargetError)
    assert (error.code, error.status, error.message) == (code, status, "as documented")
    assert error.details == {"field": "x"}
    assert str(error) == f"HTTP {status} {code}: as documented"
    # Writes raise the same way as reads.
    with pytest.raises(kind):
        await send(client, ValueRequest(value=1, currency="EUR").call(7, "cv"), "k", SuccessAnswer)


def test_every_documented_code_has_its_own_class() -> None:
    seen = {
        errors.error_from_answer(400, {"error": {"code": code.value}}, None).__class__
        for code in errors.ErrorCode
    }
    assert errors.UnexpectedAnswer not in seen
    assert len(seen) == 9  # the three 401 codes share AuthError


@pytest.mark.parametrize(
    ("header", "seconds"), [("12", 12.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None), (None, None)]
)
async def test_retry_after_is_parsed_into_the_error(
    client: AdTargetClient, recorder: Recorder, header: str | None, seconds: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    answer(recorder, {"error": {"code": "RATE_LIMITED", "message": "slow"}}, 429, **headers)
    with pytest.raises(errors.RateLimited) as raised:
        await client.list_channels()
    assert raised.value.retry_after == seconds
    assert raised.value.retryable is True


async def test_an_answer_without_the_envelope_still_gets_a_typed_error(
    client: AdTargetClient, recorder: Recorder
) -> None:
    recorder.response = httpx.Response(502, text="<html>bad gateway</html>")
    with pytest.raises(errors.InternalError) as raised:
        await client.get_lead(1)
    assert raised.value.status == 502
    assert str(raised.value) == "HTTP 502: not AdTarget's error envelope"
    recorder.response = httpx.Response(418, json={"error": {"code": "TEAPOT", "message": "no"}})
    with pytest.raises(errors.UnexpectedAnswer) as unexpected:
        await client.get_lead(1)
    assert str(unexpected.value) == "HTTP 418 TEAPOT: no"


async def test_a_success_of_the_wrong_shape_is_an_unexpected_answer(
    client: AdTargetClient, recorder: Recorder
) -> None:
    answer(recorder, {"lead": "?"})
    with pytest.raises(errors.UnexpectedAnswer, match="not the documented Lead"):
        await client.get_lead(1)


async def test_no_answer_is_unreachable_not_an_httpx_error(recorder: Recorder) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    for handler, words in ((refuse, "ConnectError"), (slow, "timed out")):
        api = AdTargetClient(BASE, SecretStr(KEY), transport=httpx.MockTransport(handler))
        try:
            with pytest.raises(errors.Unreachable, match=words):
                await api.get_lead(1)
        finally:
            await api.aclose()


async def test_a_read_held_by_pacing_ends_with_a_clear_error(
    client: AdTargetClient, recorder: Recorder
) -> None:
    client.timeout = 0.05
    client.pacer.hold(30)  # as after a 429 with Retry-After: 30
    with pytest.raises(errors.Unreachable, match=r"no answer within 0\.1 s"):
        await client.get_lead(1)
    assert recorder.requests == []


@pytest.mark.parametrize("status", [408, 425])
def test_a_request_not_taken_up_is_transient(status: int) -> None:
    error = errors.error_from_answer(status, None, None)
    assert isinstance(error, errors.Transient)
    assert error.retryable is True


def test_a_conversion_id_survives_its_value_path() -> None:
    path = wire.conversion_value_path(42, "cv/1 x")
    assert path == "/leads/42/conversions/cv%2F1%20x/value"
    assert wire.value_path_conversion(path) == "cv/1 x"
    assert wire.value_path_conversion(wire.lead_events_path(42)) is None
