"""The AdTarget client's wire format, with httpx.MockTransport."""

from __future__ import annotations

import gc
import json

import httpx
import pytest
from pydantic import SecretStr

from bot.adtarget.client import AdTargetClient

KEY = "atk_live_abcd1234_0123456789abcdefghijklmnopqrstuv"


async def test_post_sends_key_idempotency_key_and_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={"conversionId": "c-1", "dispatched": True},
            headers={"X-Idempotent-Replay": "true"},
        )

    client = AdTargetClient(
        "https://adtarget.example/", SecretStr(KEY), transport=httpx.MockTransport(handler)
    )
    try:
        answer = await client.post(
            "/events/conversion",
            {"telegramUserId": 1, "channelId": "-1001"},
            idempotency_key="jb-conversion-1",
            headers={"X-Adtarget-Client-IP": "203.0.113.9"},
        )
    finally:
        await client.aclose()
    (request,) = seen
    assert str(request.url) == "https://adtarget.example/api/v1/events/conversion"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Idempotency-Key"] == "jb-conversion-1"
    assert request.headers["X-Adtarget-Client-IP"] == "203.0.113.9"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"telegramUserId": 1, "channelId": "-1001"}
    assert answer.status == 200
    assert answer.replay is True
    assert answer.body["conversionId"] == "c-1"


@pytest.mark.parametrize(
    ("response", "code", "retry_after", "described"),
    [
        (
            httpx.Response(
                429,
                json={"error": {"code": "RATE_LIMITED", "message": "slow down"}},
                headers={"Retry-After": "12"},
            ),
            "RATE_LIMITED",
            12.0,
            "HTTP 429 RATE_LIMITED: slow down",
        ),
        (httpx.Response(502, text="<html>bad gateway</html>"), None, None, "HTTP 502"),
    ],
)
async def test_error_envelope_and_retry_after(
    response: httpx.Response, code: str | None, retry_after: float | None, described: str
) -> None:
    client = AdTargetClient(
        "https://adtarget.example",
        SecretStr(KEY),
        transport=httpx.MockTransport(lambda _request: response),
    )
    try:
        answer = await client.post("/events/conversion", {}, idempotency_key="k")
    finally:
        await client.aclose()
    assert answer.error_code == code
    assert answer.retry_after == retry_after
    assert answer.describe() == described


async def test_transport_errors_propagate() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = AdTargetClient(
        "https://adtarget.example", SecretStr(KEY), transport=httpx.MockTransport(handler)
    )
    try:
        with pytest.raises(httpx.ConnectError):
            await client.get("/leads/1")
    finally:
        await client.aclose()


async def test_answers_are_freed_without_the_garbage_collector() -> None:
    # httpx ties a response to its stream in a cycle; the client breaks it, so a
    # send's objects do not pile up for the collector, one lot per conversion.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"conversionId": "c-1", "dispatched": True})

    client = AdTargetClient(
        "https://adtarget.example", SecretStr(KEY), transport=httpx.MockTransport(handler)
    )
    try:
        await client.post("/events/conversion", {}, idempotency_key="warm-up")
        gc.collect()
        gc.disable()
        try:
            for i in range(20):
                answer = await client.post("/events/conversion", {}, idempotency_key=f"k{i}")
                assert answer.body == {"conversionId": "c-1", "dispatched": True}
            await client.get("/leads/1")
            left_for_the_collector = gc.collect()
        finally:
            gc.enable()
    finally:
        await client.aclose()
    assert left_for_the_collector < 21  # was ~24 objects per request
