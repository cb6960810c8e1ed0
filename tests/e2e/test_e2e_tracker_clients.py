"""Who the tracker's client is, end to end over loopback: the running bridge, clients
bound to their own loopback addresses (127.0.0.2 and 127.0.0.3 are "the internet":
TRUSTED_PROXIES=127.0.0.1 trusts only the landing page's own server), and raw
sockets for the bytes an HTTP library would refuse to send."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from typing import Any

import httpx
import pytest

from bot.tracker.clients import ClientRateLimiter, rate_key
from tests.harness import RunningBridge, StartBridge

VISIT = "/api/v1/events/visit"
PAGE = "https://landing.example/offer?utm_source=meta"
STRANGER = "127.0.0.2"
VICTIM = "127.0.0.3"
BURST = 5
GZIP_JSON = {"Content-Type": "application/json", "Content-Encoding": "gzip"}


def client_at(running: RunningBridge, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=running.bridge.tracker_url, transport=transport, timeout=10)


@pytest.fixture
async def tracker(start_bridge: StartBridge) -> RunningBridge:
    return await start_bridge(
        trusted_proxies="127.0.0.1", tracker_burst=BURST, tracker_rate_per_minute=6
    )


async def stored_client(running: RunningBridge, temp_id: str) -> tuple[Any, Any]:
    row = await running.bridge.db.fetchone(
        "SELECT client_ip, user_agent FROM visits WHERE temp_id = ?", (temp_id,)
    )
    assert row is not None
    return row[0], row[1]


def temp(n: int) -> str:
    return f"17171717-0000-4000-8000-{n:012d}"


async def test_a_browser_cannot_name_its_address_by_header_or_body(
    tracker: RunningBridge,
) -> None:
    async with client_at(tracker, STRANGER) as http:
        response = await http.post(
            VISIT,
            json={"tempId": temp(1), "href": PAGE, "clientIp": "198.51.100.1", "userAgent": "B"},
            headers={
                "X-Adtarget-Client-IP": "198.51.100.2",
                "X-Adtarget-Client-User-Agent": "H",
                "User-Agent": "RealBrowser/1.0",
            },
        )
    assert response.status_code == 200
    assert await stored_client(tracker, temp(1)) == (STRANGER, "RealBrowser/1.0")


async def test_the_landing_pages_own_server_names_its_visitors(tracker: RunningBridge) -> None:
    # Peer 127.0.0.1 is trusted and sent no X-Forwarded-For: a server-side caller.
    async with client_at(tracker, "127.0.0.1") as http:
        response = await http.post(
            VISIT,
            json={"tempId": temp(2), "href": PAGE, "clientIp": "198.51.100.1", "userAgent": "B"},
        )
    assert response.status_code == 200
    assert await stored_client(tracker, temp(2)) == ("198.51.100.1", "B")


async def test_behind_the_proxy_the_nearest_untrusted_hop_of_every_line_is_the_client(
    tracker: RunningBridge,
) -> None:
    # nginx at 127.0.0.1 appends its own line; a forged first line changes nothing.
    async with client_at(tracker, "127.0.0.1") as http:
        response = await http.post(
            VISIT,
            json={"tempId": temp(3), "href": PAGE, "clientIp": "198.51.100.1"},
            headers=[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Adtarget-Client-IP", "198.51.100.2"),
            ],
        )
    assert response.status_code == 200
    # A forwarded browser is not a server-side caller: its claims are ignored too.
    ip, _ = await stored_client(tracker, temp(3))
    assert ip == "203.0.113.9"


async def test_rotating_the_named_address_does_not_escape_the_limit(
    tracker: RunningBridge,
) -> None:
    statuses = []
    async with client_at(tracker, STRANGER) as http:
        for n in range(BURST + 3):
            response = await http.post(
                VISIT,
                json={"href": PAGE},
                headers={"X-Adtarget-Client-IP": f"198.51.100.{n + 1}"},
            )
            statuses.append(response.status_code)
    assert statuses[:BURST] == [200] * BURST
    assert statuses[BURST:] == [429] * 3
    assert "Retry-After" in response.headers


async def test_naming_someone_elses_address_spends_only_ones_own_allowance(
    tracker: RunningBridge,
) -> None:
    async with client_at(tracker, STRANGER) as attacker:
        for _ in range(BURST + 2):
            await attacker.post(
                VISIT, json={"href": PAGE}, headers={"X-Adtarget-Client-IP": VICTIM}
            )
    async with client_at(tracker, VICTIM) as victim:
        response = await victim.post(VISIT, json={"href": PAGE})
    assert response.status_code == 200


async def test_a_server_side_caller_is_limited_per_visitor_not_as_one_client(
    tracker: RunningBridge,
) -> None:
    async with client_at(tracker, "127.0.0.1") as server:
        many = [
            await server.post(VISIT, json={"href": PAGE, "clientIp": f"198.51.100.{n}"})
            for n in range(1, 4 * BURST)
        ]
        assert {r.status_code for r in many} == {200}
        one = [
            await server.post(VISIT, json={"href": PAGE, "clientIp": "198.51.100.250"})
            for _ in range(BURST + 1)
        ]
    assert [r.status_code for r in one] == [200] * BURST + [429]


async def test_with_a_token_only_its_bearer_names_visitors(start_bridge: StartBridge) -> None:
    running = await start_bridge(tracker_token="s3cret-token", trusted_proxies="127.0.0.1")
    named = {"X-Adtarget-Client-IP": "198.51.100.7"}
    async with client_at(running, STRANGER) as http:
        refused = await http.post(VISIT, json={"href": PAGE}, headers=named)
        assert refused.status_code == 401
        ok = await http.post(
            VISIT,
            json={"tempId": temp(4), "href": PAGE},
            headers={**named, "Authorization": "Bearer s3cret-token"},
        )
    assert ok.status_code == 200
    assert (await stored_client(running, temp(4)))[0] == "198.51.100.7"
    # The same host without the token: not a server-side caller any more.
    async with client_at(running, "127.0.0.1") as http:
        assert (await http.post(VISIT, json={"href": PAGE}, headers=named)).status_code == 401


# ---- M1: nothing a client sends is a 500 ---------------------------------------------


async def raw_request(running: RunningBridge, request: bytes) -> tuple[int, bytes]:
    host, port = running.bridge.tracker_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    writer.close()
    return status, body


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"User-Agent: caf\xe9\xff", b"header User-Agent: not valid UTF-8 text"),
        (b"Authorization: Bearer \xff\xfe", b"header Authorization: not valid UTF-8 text"),
        # C1 controls pass the HTTP parser (ASCII ones it refuses itself, in plain text).
        (b"X-Adtarget-Client-User-Agent: a\xc2\x85b", b"contains control characters"),
    ],
)
async def test_headers_that_are_not_text_are_a_json_400(
    tracker: RunningBridge, header: bytes, expected: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = b'{"href": "https://landing.example/"}'
    status, answer = await raw_request(
        tracker,
        b"POST /api/v1/events/visit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + header
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body,
    )
    assert status == 400
    assert b'"INVALID_PAYLOAD"' in answer
    assert expected in answer
    assert "Traceback" not in caplog.text


async def test_a_gzip_body_is_read_within_the_size_cap(tracker: RunningBridge) -> None:
    body = json.dumps({"tempId": temp(5), "href": PAGE}).encode()
    bomb = gzip.compress(b'{"href": "' + b"a" * 200_000 + b'"}')
    async with client_at(tracker, STRANGER) as http:
        ok = await http.post(VISIT, content=gzip.compress(body), headers=GZIP_JSON)
        refused = await http.post(VISIT, content=bomb, headers=GZIP_JSON)
    assert ok.status_code == 200
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "body: larger than 16 KB"


async def test_a_body_that_is_not_its_content_encoding_is_a_json_400(
    tracker: RunningBridge, caplog: pytest.LogCaptureFixture
) -> None:
    async with client_at(tracker, STRANGER) as http:
        response = await http.post(
            VISIT,
            content=b"this is not gzip",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_PAYLOAD"
    assert response.json()["error"]["message"].startswith("body: ")
    assert "ERROR" not in caplog.text


@pytest.mark.parametrize("channel", ["--5", "²", str(2**63), str(-(2**63) - 1), "@x y"])
async def test_odd_channel_ids_are_a_json_400_in_body_and_query(
    tracker: RunningBridge, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with client_at(tracker, "127.0.0.1") as http:
        posted = await http.post("/api/v1/events/invite", json={"channelId": channel})
        got = await http.get("/track/invite", params={"channelId": channel})
        big = await http.post("/api/v1/events/invite", json={"channelId": 2**63})
    for response in (posted, got, big):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"].startswith("channelId: ")
    assert "ERROR" not in caplog.text


# ---- the limiter's memory -------------------------------------------------------------


def test_the_limiter_forgets_the_least_recent_clients_past_its_bound() -> None:
    limiter = ClientRateLimiter(rate_per_minute=60, burst=2, max_clients=100)
    for n in range(10_000):
        limiter.take(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 100
    # A client seen just now keeps its bucket: its next requests are still limited.
    key = "192.0.2.1"
    assert limiter.take(key) == 0.0
    assert limiter.take(key) == 0.0
    assert limiter.take(key) > 0.0


def test_an_ipv6_client_is_keyed_by_its_slash_64() -> None:
    assert rate_key("2001:db8:1:2:aaaa::1") == rate_key("2001:db8:1:2:bbbb::2")
    assert rate_key("2001:db8:1:3::1") != rate_key("2001:db8:1:2::1")
    assert rate_key("198.51.100.1") != rate_key("198.51.100.2")
    assert rate_key(None) == rate_key("garbage") == "unknown"


async def test_cors_answers_exact_origins_only_never_null(start_bridge: StartBridge) -> None:
    running = await start_bridge(tracker_allowed_origins="https://landing.example")
    preflight = {"Access-Control-Request-Method": "POST"}
    async with client_at(running, "127.0.0.1") as http:
        ok = await http.post(
            VISIT, json={"href": PAGE}, headers={"Origin": "https://landing.example"}
        )
        null = await http.post(VISIT, json={"href": PAGE}, headers={"Origin": "null"})
        null_preflight = await http.options(VISIT, headers={"Origin": "null", **preflight})
        other = await http.options(VISIT, headers={"Origin": "https://evil.example", **preflight})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://landing.example"
    assert "Access-Control-Allow-Origin" not in null.headers
    assert null_preflight.status_code == other.status_code == 403
    assert null_preflight.json()["error"]["code"] == "ORIGIN_NOT_ALLOWED"
