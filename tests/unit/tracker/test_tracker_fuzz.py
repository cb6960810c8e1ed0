"""Hostile input against the running tracker: thousands of generated requests.

The bridge runs (fakes, SQLite, the real tracker on loopback) in a thread of its
own, so hypothesis can drive plain synchronous clients at it and shrink any
failure to its smallest request. Every answer must be under 500, and every
error the tracker itself gives is `{"error": {"code", "message"}}` JSON; nothing
is logged at ERROR. Raw-socket requests may also be refused by aiohttp's HTTP
parser before the tracker sees them (a plain-text 400): never a 5xx either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, start_tracked

REQUESTS = 1_600  # well-formed HTTP, through httpx
RAW_REQUESTS = 600  # arbitrary bytes where HTTP allows text
PATHS = [
    "/api/v1/events/visit",
    "/api/v1/events/update-fbp",
    "/api/v1/events/invite",
    "/track/invite",
    "/healthz",
    "/metrics",
    "/",
    "/api/v1/events/visit/../invite",
    "/%00",
]
FIELDS = [
    "tempId",
    "href",
    "channelId",
    "clientSessionId",
    "clientIp",
    "userAgent",
    "fbc",
    "fbp",
    "referrer",
    "landingPage",
    "utmSource",
    "externalUserId",
    "gclid",
]
HEADERS = [
    "User-Agent",
    "Authorization",
    "X-Forwarded-For",
    "X-Adtarget-Client-IP",
    "X-Adtarget-Client-User-Agent",
    "Origin",
    "Referer",
    "Cookie",
    "Content-Encoding",
    "X-Forwarded-Proto",
]
TRICKY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "--5",
        "²",
        str(2**63),
        str(-(2**63) - 1),
        "@x",
        "null",
        "*",
        "gzip",
        "deflate",
        "br",
        "1.2.3.4, 5.6.7.8",
        "::1",
        "[::1]:80",
        "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        str(CHANNEL_ID),
        "https://landing.example/?fbclid=abc",
        "javascript:alert(1)",
        "\ud800",
        "a" * 5000,
    ]
)
TEXT = st.one_of(TRICKY_TEXT, st.text(max_size=40))
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
BODY = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUE, max_size=6).map(
        lambda d: json.dumps(d).encode()
    ),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.just(b'{"href": "https://a.example/"' + b"]" * 1000),
    st.just(b"[" * 100_000),
)


class _Errors(logging.Handler):
    """Collects ERROR records (tracebacks included) from every thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, _Errors]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    ready = threading.Event()
    stop = threading.Event()
    found: dict[str, str] = {}

    async def serve() -> None:
        telegram, adtarget = FakeTelegram(), FakeAdTarget()
        await telegram.start()
        await adtarget.start()
        telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
        # Limits out of the way: the fuzzer is one client sending thousands of requests.
        running = await start_tracked(
            tmp,
            telegram,
            adtarget,
            tracker_rate_per_minute=10**7,
            tracker_burst=10**6,
            tracker_visits_per_hour=10**7,
            tracker_allowed_origins="https://landing.example",
        )
        found["url"] = running.bridge.tracker_url
        ready.set()
        await asyncio.to_thread(stop.wait)
        await running.stop()
        await adtarget.stop()
        await telegram.stop()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="fuzzed-bridge")
    thread.start()
    assert ready.wait(60), "the bridge did not start"
    try:
        yield found["url"], errors
    finally:
        stop.set()
        thread.join(60)
        logging.getLogger().removeHandler(errors)


def _assert_answer(response: httpx.Response, errors: _Errors) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.text
        if response.request.method == "HEAD":
            return  # an answer to HEAD has its headers only
        error = response.json()["error"]
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
    assert errors.records == []


@settings(
    max_examples=REQUESTS,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "HEAD"]),
    path=st.sampled_from(PATHS),
    query=st.dictionaries(st.sampled_from(["channelId", "tempId", "fbclid", "utm_source"]), TEXT),
    headers=st.dictionaries(
        st.sampled_from(HEADERS),
        TEXT.filter(lambda t: t.isprintable() and t.isascii() and t == t.strip()),
        max_size=4,
    ),
    content_type=st.sampled_from(["application/json", "text/plain", "application/json; x=1", ""]),
    body=BODY,
)
def test_generated_requests_never_get_a_5xx_and_errors_are_json(
    tracker: tuple[str, _Errors],
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    content_type: str,
    body: bytes,
) -> None:
    url, errors = tracker
    sent = dict(headers)
    if content_type:
        sent["Content-Type"] = content_type
    params = {k: v for k, v in query.items() if "\ud800" not in v}
    # aiohttp's parser refuses a request line over 8 KB itself (plain text, as for
    # the raw requests below): keep this test to requests the tracker gets to see.
    while params and len(str(httpx.QueryParams(params))) > 6000:
        params.popitem()
    with httpx.Client(base_url=url, timeout=10) as http:
        response = http.request(
            method, path, params=params, headers=sent, content=body if method != "GET" else None
        )
    _assert_answer(response, errors)


RAW_HEADER_VALUE = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)


@settings(
    max_examples=RAW_REQUESTS,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(PATHS[:4]),
    header=st.sampled_from(HEADERS),
    value=RAW_HEADER_VALUE,
    body=BODY,
)
def test_raw_header_bytes_never_get_a_5xx(
    tracker: tuple[str, _Errors], path: str, header: str, value: bytes, body: bytes
) -> None:
    url, errors = tracker
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode()
        + header.encode()
        + b": "
        + value
        + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status < 500, answer[:300]
    head, _, content = answer.partition(b"\r\n\r\n")
    if status >= 400 and b"application/json" in head.lower():
        error: dict[str, Any] = json.loads(content)["error"]
        assert set(error) == {"code", "message"}
    assert errors.records == []
