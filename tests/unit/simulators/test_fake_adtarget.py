"""The AdTarget fake keeps the contract in /work/shared/adtarget-api.md.

Driven with a real httpx client, as the bridge drives AdTarget, so the fake's
faults (timeouts, dropped connections, 429s) look to the client as they will
in the bridge's own tests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bot.simulators.adtarget import FakeAdTarget

CONVERSION = "/api/v1/events/conversion"
VISIT = "/api/v1/events/visit"
LEAD_BODY: dict[str, Any] = {"telegramUserId": 42, "channelId": "ch_1", "eventType": "Lead"}
CHANNELS: list[dict[str, Any]] = [
    {"channelId": "ch_1", "telegramChannelId": "-1001234567890", "title": "One", "funnelOrder": 1},
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAdTarget]:
    async with FakeAdTarget() as server:
        yield server


def _client(fake: FakeAdTarget, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key or fake.API_KEY}"}
    return httpx.AsyncClient(base_url=fake.url, headers=headers, timeout=5.0)


@pytest.fixture
async def client(fake: FakeAdTarget) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(fake) as http:
        yield http


def _error(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


async def test_auth_errors(fake: FakeAdTarget) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as anonymous:
        assert _error(await anonymous.get("/api/v1/channels"))[:2] == (401, "AUTH_REQUIRED")
        basic = await anonymous.get("/api/v1/channels", headers={"Authorization": "Basic eDp5"})
        assert _error(basic)[:2] == (401, "AUTH_REQUIRED")
    async with _client(fake, "atk_live_wrong000_" + "x" * 32) as wrong:
        assert _error(await wrong.get("/api/v1/channels"))[:2] == (401, "INVALID_KEY")
    async with _client(fake) as http:
        assert (await http.get("/api/v1/channels")).status_code == 200
        fake.revoke_key()
        assert _error(await http.get("/api/v1/channels"))[:2] == (401, "REVOKED_KEY")
        new_key = "atk_live_new00000_" + "n" * 32
        fake.set_key(new_key)
        assert (
            await http.get("/api/v1/channels", headers={"Authorization": f"Bearer {new_key}"})
        ).json() == {"channels": []}
    assert fake.status_counts() == {200: 2, 401: 4}
    assert fake.conversions == []


async def test_conversion_answer_shape_and_warm_lead(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    first = await client.post(CONVERSION, json={**LEAD_BODY, "fbc": "fb.1.1700000000.AbCd"})
    assert first.status_code == 200
    answer = first.json()
    uuid.UUID(answer.pop("conversionId"))
    [send] = answer.pop("sends")
    assert send["platform"] == "meta"
    uuid.UUID(send["sendId"])
    assert answer == {"capiStatus": "pending", "coldLead": True, "dispatched": True}

    second = (await client.post(CONVERSION, json=LEAD_BODY)).json()
    assert second["coldLead"] is False  # same (user, channel): warm
    # A warm lead inherits the first conversion's attribution (fbc): dispatched.
    assert second["capiStatus"] == "pending"
    assert second["dispatched"] is True
    assert "warning" not in second

    bare = (await client.post(CONVERSION, json={**LEAD_BODY, "telegramUserId": 77})).json()
    assert bare["capiStatus"] == "skipped"
    assert bare["dispatched"] is False
    assert bare["sends"] == []
    assert bare["warning"] == "No attribution signal matched a configured pixel"

    other_channel = await client.post(CONVERSION, json={**LEAD_BODY, "channelId": "ch_2"})
    assert other_channel.json()["coldLead"] is True
    assert [c["conversionId"] for c in fake.conversions][:2] == [
        first.json()["conversionId"],
        second["conversionId"],
    ]
    stored = fake.conversions[0]
    assert stored["fbc"] == "fb.1.1700000000.AbCd"
    assert stored["idempotencyKey"] is None
    assert stored["createdAt"].endswith("Z")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"telegramUserId": None}, "telegramUserId"),
        ({"telegramUserId": True}, "telegramUserId"),
        ({"telegramUserId": 4.0}, "telegramUserId"),
        ({"telegramUserId": 0}, "telegramUserId"),
        ({"channelId": ""}, "channelId"),
        ({"channelId": -100123}, "channelId"),
        ({"eventType": "Signup"}, "eventType"),
        ({"eventType": "Custom"}, "customEventName"),
        ({"eventTime": 1_700_000_000.5}, "eventTime"),
        ({"value": -1}, "value"),
        ({"value": "9.99"}, "value"),
        ({"currency": "usd"}, "currency"),
        ({"fbc": None}, "fbc"),
        ({"pii": {"email": 5}}, "pii.email"),
    ],
)
async def test_conversion_validation_names_the_field(
    fake: FakeAdTarget, client: httpx.AsyncClient, patch: dict[str, Any], field: str
) -> None:
    body = {**LEAD_BODY, **patch}
    if patch.get("telegramUserId", 1) is None:
        del body["telegramUserId"]
    status, code, message = _error(await client.post(CONVERSION, json=body))
    assert (status, code) == (400, "INVALID_PAYLOAD")
    assert message.startswith(f"{field}: ")
    assert fake.conversions == []


async def test_malformed_and_non_object_bodies(client: httpx.AsyncClient) -> None:
    broken = await client.post(
        CONVERSION, content=b'{"telegramUserId": 4', headers={"Content-Type": "application/json"}
    )
    assert _error(broken)[:2] == (400, "INVALID_PAYLOAD")
    assert "malformed JSON" in _error(broken)[2]
    array = await client.post(CONVERSION, json=[LEAD_BODY])
    assert _error(array) == (400, "INVALID_PAYLOAD", "body: must be a JSON object, got an array")
    too_long = await client.post(CONVERSION, json=LEAD_BODY, headers={"Idempotency-Key": "k" * 129})
    assert _error(too_long)[:2] == (400, "INVALID_PAYLOAD")


async def test_idempotent_replay(fake: FakeAdTarget, client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "join-42-ch_1"}
    first = await client.post(CONVERSION, json=LEAD_BODY, headers=headers)
    # The body is not compared: one key, one request.
    again = await client.post(CONVERSION, json={**LEAD_BODY, "value": 5}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert "X-Idempotent-Replay" not in first.headers
    assert again.headers["X-Idempotent-Replay"] == "true"
    assert again.json() == first.json()
    assert len(fake.conversions) == 1
    assert fake.conversions[0]["idempotencyKey"] == "join-42-ch_1"
    assert [r.replay for r in fake.received_on(CONVERSION)] == [False, True]


async def test_errors_are_not_stored_for_replay(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    fake.fail(500, "INTERNAL_ERROR", count=1)
    headers = {"Idempotency-Key": "retry-me"}
    assert (await client.post(CONVERSION, json=LEAD_BODY, headers=headers)).status_code == 500
    retry = await client.post(CONVERSION, json=LEAD_BODY, headers=headers)
    assert retry.status_code == 200
    assert "X-Idempotent-Replay" not in retry.headers
    assert len(fake.conversions) == 1


async def test_rate_limit_after_burst() -> None:
    async with FakeAdTarget(rate_per_minute=6, burst=3) as fake, _client(fake) as http:
        headers = {"Idempotency-Key": "same"}
        statuses = [
            (await http.post(CONVERSION, json=LEAD_BODY, headers=headers)).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 200]  # replays take tokens too
        limited = await http.post(CONVERSION, json=LEAD_BODY)
        assert _error(limited)[:2] == (429, "RATE_LIMITED")
        assert int(limited.headers["Retry-After"]) >= 1
        assert fake.status_counts() == {200: 3, 429: 1}
        fake.set_rate(6000, 1)
        assert (await http.post(CONVERSION, json=LEAD_BODY)).status_code == 200


async def test_fail_count_then_success(fake: FakeAdTarget, client: httpx.AsyncClient) -> None:
    fake.fail(503, "API_DISABLED", "paused", count=2)
    for _ in range(2):
        assert _error(await client.post(CONVERSION, json=LEAD_BODY)) == (
            503,
            "API_DISABLED",
            "paused",
        )
    assert (await client.post(CONVERSION, json=LEAD_BODY)).status_code == 200
    assert len(fake.conversions) == 1
    assert fake.status_counts() == {200: 1, 503: 2}


async def test_fail_for_seconds_on_some_paths(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    fake.fail(402, "SUBSCRIPTION_INACTIVE", seconds=0.3, paths=(CONVERSION,))
    assert (await client.post(CONVERSION, json=LEAD_BODY)).status_code == 402
    assert (await client.get("/api/v1/channels")).status_code == 200
    await asyncio.sleep(0.35)
    assert (await client.post(CONVERSION, json=LEAD_BODY)).status_code == 200
    fake.fail(500, "INTERNAL_ERROR")
    assert (await client.get("/api/v1/channels")).status_code == 500
    fake.clear_faults()
    assert (await client.get("/api/v1/channels")).status_code == 200


async def test_processed_but_answered_too_late(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    fake.process_then_delay(5.0)
    headers = {"Idempotency-Key": "late-1"}
    with pytest.raises(httpx.ReadTimeout):
        await client.post(CONVERSION, json=LEAD_BODY, headers=headers, timeout=0.3)
    assert len(fake.conversions) == 1  # stored although the client never heard
    retry = await client.post(CONVERSION, json=LEAD_BODY, headers=headers)
    assert retry.status_code == 200
    assert retry.headers["X-Idempotent-Replay"] == "true"
    assert retry.json()["conversionId"] == fake.conversions[0]["conversionId"]
    assert len(fake.conversions) == 1


async def test_hang_times_out_without_processing(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    fake.hang(5.0)
    with pytest.raises(httpx.ReadTimeout):
        await client.post(CONVERSION, json=LEAD_BODY, timeout=0.3)
    assert fake.conversions == []
    assert (await client.post(CONVERSION, json=LEAD_BODY)).status_code == 200


async def test_dropped_connection(fake: FakeAdTarget, client: httpx.AsyncClient) -> None:
    fake.drop_connections(count=1)
    with pytest.raises(httpx.TransportError):
        await client.post(CONVERSION, json=LEAD_BODY)
    assert fake.conversions == []
    assert fake.received[0].status == 0  # never answered
    assert (await client.post(CONVERSION, json=LEAD_BODY)).status_code == 200
    assert fake.status_counts() == {200: 1}


async def test_visit_headers_win_over_body(fake: FakeAdTarget, client: httpx.AsyncClient) -> None:
    body = {
        "href": "https://yoursite.com/landing?fbclid=AbCd",
        "fbc": "fb.1.1700000000.AbCd",
        "clientIp": "198.51.100.7",
        "userAgent": "BodyAgent/1",
    }
    headers = {
        "X-Adtarget-Client-IP": "203.0.113.42",
        "X-Adtarget-Client-User-Agent": "HeaderAgent/2",
    }
    answer = (await client.post(VISIT, json=body, headers=headers)).json()
    assert fake.visits[0]["clientIp"] == "203.0.113.42"
    assert fake.visits[0]["userAgent"] == "HeaderAgent/2"
    assert fake.visits[0]["landingPage"] == "https://yoursite.com/landing"
    assert answer["cookies"] == {
        "tempId": {
            "name": "adtarget_temp_id",
            "value": answer["tempId"],
            "maxAge": 31536000,
            "sameSite": "Lax",
        },
        "session": {
            "name": "adtarget_session_id",
            "value": answer["clientSessionId"],
            "maxAge": 1800,
            "sameSite": "Lax",
        },
    }
    assert {"visitId", "sessionId"} <= answer.keys()
    uuid.UUID(answer["tempId"])

    await client.post(VISIT, json={**body, "tempId": answer["tempId"]})
    assert fake.visits[1]["clientIp"] == "198.51.100.7"  # body only: body counts
    assert fake.visits[1]["tempId"] == answer["tempId"]

    missing = await client.post(VISIT, json={"fbc": "x"})
    assert _error(missing) == (400, "INVALID_PAYLOAD", "href: required")

    fbp = {"tempId": answer["tempId"], "fbp": "fb.1.1700000001.99"}
    assert (await client.post("/api/v1/events/update-fbp", json=fbp)).json() == {"success": True}
    assert fake.visits[1]["fbp"] == "fb.1.1700000001.99"
    unknown = {**fbp, "tempId": str(uuid.uuid4())}
    assert (await client.post("/api/v1/events/update-fbp", json=unknown)).json() == {
        "success": False
    }

    invite = {"tempId": answer["tempId"], "channelId": "-1001234567890"}
    link = (await client.post("/api/v1/events/invite", json=invite)).json()["inviteLink"]
    assert link.startswith("https://t.me/+")


async def test_leads_get_events_values_and_404(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    assert _error(await client.get("/api/v1/leads/42"))[:2] == (404, "LEAD_NOT_FOUND")
    created = await client.post(CONVERSION, json={**LEAD_BODY, "eventTime": 1_700_000_000_123})
    conversion_id = created.json()["conversionId"]

    lead = (await client.get("/api/v1/leads/42")).json()
    assert lead["telegramUserId"] == 42
    assert lead["firstSeenAt"].endswith("Z")
    assert lead["lastSeenAt"].endswith("Z")
    assert lead["conversions"] == [
        {
            "conversionId": conversion_id,
            "channelId": "ch_1",
            "eventType": "Lead",
            "capiStatus": "skipped",
            "attributedAt": "2023-11-14T22:13:20.123Z",
            "source": "api",
        }
    ]

    follow_up = await client.post(
        "/api/v1/leads/42/events", json={"eventType": "Purchase", "value": 10}
    )
    assert follow_up.status_code == 200
    assert follow_up.json()["coldLead"] is False
    assert fake.events[0]["channelId"] == "ch_1"  # resolved from the latest conversion
    no_lead = await client.post("/api/v1/leads/7/events", json={"eventType": "Purchase"})
    assert _error(no_lead)[:2] == (404, "LEAD_NOT_FOUND")

    value_path = f"/api/v1/leads/42/conversions/{conversion_id}/value"
    ok = await client.post(value_path, json={"value": 19.99, "currency": "EUR"})
    assert ok.json() == {"success": True}
    assert fake.values == [
        {"value": 19.99, "currency": "EUR", "telegramUserId": 42, "conversionId": conversion_id}
    ]
    bad_value = await client.post(value_path, json={"value": 0, "currency": "EUR"})
    assert _error(bad_value)[2].startswith("value: ")
    unknown = await client.post(
        "/api/v1/leads/42/conversions/nope/value", json={"value": 1, "currency": "EUR"}
    )
    assert _error(unknown)[:2] == (404, "CONVERSION_NOT_FOUND")

    conversions = (await client.get("/api/v1/leads/42")).json()["conversions"]
    assert conversions[0]["eventValue"] == 19.99
    assert conversions[0]["eventCurrency"] == "EUR"
    assert len(conversions) == 2


async def test_configured_channels() -> None:
    async with FakeAdTarget(channels=CHANNELS) as fake, _client(fake) as http:
        assert (await http.get("/api/v1/channels")).json() == {"channels": CHANNELS}
        by_telegram_id = {**LEAD_BODY, "channelId": "-1001234567890"}
        assert (await http.post(CONVERSION, json=by_telegram_id)).status_code == 200
        unknown = await http.post(CONVERSION, json={**LEAD_BODY, "channelId": "ch_9"})
        assert _error(unknown)[:2] == (404, "CHANNEL_NOT_FOUND")
        assert len(fake.conversions) == 1


async def test_unknown_paths(client: httpx.AsyncClient) -> None:
    assert _error(await client.get("/api/v1/nope"))[:2] == (404, "NOT_FOUND")
    assert _error(await client.get("/elsewhere"))[:2] == (404, "NOT_FOUND")


async def test_wait_for_conversions_and_latency(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    fake.latency = 0.1
    started = time.monotonic()
    waiter = asyncio.create_task(fake.wait_for_conversions(2, timeout=5))
    await asyncio.gather(*(client.post(CONVERSION, json=LEAD_BODY) for _ in range(2)))
    assert time.monotonic() - started >= 0.1
    assert len(await waiter) == 2
    with pytest.raises(TimeoutError):
        await fake.wait_for_conversions(3, timeout=0.1)


async def test_a_failing_handler_answers_internal_error_in_the_envelope(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str) -> int:
        raise RuntimeError("storage exploded")

    monkeypatch.setattr("bot.simulators.adtarget_rules.user_id", broken)
    response = await client.get("/api/v1/leads/42")
    assert _error(response) == (500, "INTERNAL_ERROR", "RuntimeError: storage exploded")


async def test_a_warm_leads_follow_up_inherits_the_attribution(
    fake: FakeAdTarget, client: httpx.AsyncClient
) -> None:
    first = await client.post(CONVERSION, json={**LEAD_BODY, "fbc": "fb.1.1.x"})
    assert first.json()["dispatched"] is True
    # No signal in the follow-up itself: the lead's earlier one is inherited.
    follow_up = await client.post("/api/v1/leads/42/events", json={"eventType": "Subscribe"})
    assert follow_up.json()["coldLead"] is False
    assert follow_up.json()["dispatched"] is True
    # A lead that never had a signal stays undispatched.
    await client.post(CONVERSION, json={**LEAD_BODY, "telegramUserId": 43})
    bare = await client.post("/api/v1/leads/43/events", json={"eventType": "Subscribe"})
    assert bare.json()["dispatched"] is False
    assert bare.json()["warning"]
