"""A simulated AdTarget REST API (/work/shared/adtarget-api.md), in-process.

A real HTTP server on 127.0.0.1 (ephemeral port) so the bridge's own httpx
client, timeouts, retries and connection handling are exercised end to end.
Tests inspect what arrived (`received`, `conversions`, ...) and inject faults.

Request pipeline for /api/v1/* (the order matters for what a client sees):
auth -> injected fault (fail / hang / drop) -> rate limit -> Idempotency-Key
replay -> body check + handler -> process_then_delay -> `latency`.
What it stores and the endpoints themselves are in adtarget_store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from . import adtarget_rules as rules
from .adtarget_store import AdTargetStore, Answer, ApiCall, ErrorAnswer

__all__ = ["FakeAdTarget", "Received"]


@dataclass
class Received:
    """One request as it arrived. Header names are lower-cased; status 0 = never answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when absent or malformed
    status: int = 0
    replay: bool = False
    at: float = 0.0  # time.monotonic() on arrival
    answer_headers: dict[str, str] = field(default_factory=dict)  # lower-cased


class _Drop(Exception):
    """Close the connection without writing any answer."""


_Handler = Callable[[ApiCall], Answer]


class FakeAdTarget(AdTargetStore):
    API_KEY: ClassVar[str] = "atk_live_abcd1234_0123456789abcdefghijklmnopqrstuv"

    def __init__(
        self,
        api_key: str = API_KEY,
        *,
        rate_per_minute: float = 300,
        burst: int = 50,
        channels: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(channels)
        self.received: list[Received] = []
        self.latency: float = 0.0
        self._key = api_key
        self._revoked: set[str] = set()
        self._limiter = rules.RateLimiter(rate_per_minute, burst)
        self._faults: list[rules.Fault] = []
        self._replies: dict[tuple[str, str], Answer] = {}  # (api key, Idempotency-Key)
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("POST", re.compile(r"/api/v1/events/visit"), self._visit),
            ("POST", re.compile(r"/api/v1/events/update-fbp"), self._update_fbp),
            ("POST", re.compile(r"/api/v1/events/invite"), self._invite),
            ("POST", re.compile(r"/api/v1/events/conversion"), self._conversion),
            ("POST", re.compile(r"/api/v1/leads/([^/]+)/events"), self._lead_event),
            ("POST", re.compile(r"/api/v1/leads/([^/]+)/conversions/([^/]+)/value"), self._value),
            ("GET", re.compile(r"/api/v1/leads/([^/]+)"), self._get_lead),
            ("GET", re.compile(r"/api/v1/channels"), self._list_channels),
        ]

    # ---- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # Short shutdown: every sleep in here ends early on stop() anyway.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._stopping.set()  # wakes hung / delayed handlers so shutdown is quick
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAdTarget:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FakeAdTarget.start() has not been awaited")
        return self._url

    @property
    def api_key(self) -> str:
        """The key currently accepted (API_KEY unless set_key() changed it)."""
        return self._key

    # ---- inspection ------------------------------------------------------

    def received_on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def status_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(r.status for r in self.received if r.status).items()))

    async def wait_for_conversions(
        self,
        n: int,
        timeout: float = 10.0,  # noqa: ASYNC109 - the tests' agreed waiting API
    ) -> list[dict[str, Any]]:
        try:
            async with asyncio.timeout(timeout):
                while len(self.conversions) < n:
                    self._conversion_added.clear()
                    await self._conversion_added.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{len(self.conversions)} of {n} conversions after {timeout}s"
            ) from None
        return list(self.conversions)

    # ---- fault injection -------------------------------------------------

    def fail(
        self,
        status: int,
        code: str,
        message: str = "",
        *,
        count: int | None = None,
        seconds: float | None = None,
        paths: tuple[str, ...] | None = None,
    ) -> None:
        """Answer this error for the next `count` requests and/or `seconds` (neither: until
        clear_faults()). `paths` are prefixes of request paths."""
        deadline = None if seconds is None else time.monotonic() + seconds
        fault = rules.Fault("fail", count, deadline, paths, status=status, code=code)
        fault.message = message or f"injected {code}"
        self._faults.append(fault)

    def hang(self, seconds: float, *, count: int = 1, paths: tuple[str, ...] | None = None) -> None:
        """Sleep `seconds` without processing, then close the connection unanswered."""
        self._faults.append(rules.Fault("hang", count, None, paths, seconds=seconds))

    def drop_connections(self, *, count: int = 1, paths: tuple[str, ...] | None = None) -> None:
        self._faults.append(rules.Fault("drop", count, None, paths))

    def process_then_delay(
        self, delay: float, *, count: int = 1, paths: tuple[str, ...] | None = None
    ) -> None:
        """Process fully (stored, idempotency key recorded), then answer `delay` s late."""
        self._faults.append(rules.Fault("late", count, None, paths, seconds=delay))

    def clear_faults(self) -> None:
        self._faults.clear()

    def revoke_key(self) -> None:
        self._revoked.add(self._key)

    def set_key(self, key: str) -> None:
        self._key = key
        self._revoked.discard(key)

    def set_rate(self, rate_per_minute: float, burst: int) -> None:
        self._limiter = rules.RateLimiter(rate_per_minute, burst)  # starts full

    # ---- pipeline --------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = Received(request.method, request.path, headers, None, at=time.monotonic())
        self.received.append(rec)
        body, parse_error = rules.parse_json(await request.read())
        rec.body = body
        try:
            answer = await self._pipeline(request, rec, body, parse_error)
        except ErrorAnswer as exc:
            answer = exc.answer
        except _Drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # nothing reaches the client: the transport is closed
        except Exception as exc:
            # An unexpected failure in a handler still answers in AdTarget's
            # envelope ("every error is {"error": {code, message}}"), as a 500.
            answer = ErrorAnswer(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}").answer
        await self._nap(self.latency)
        rec.status = answer.status
        rec.answer_headers = {k.lower(): v for k, v in (answer.headers or {}).items()}
        return web.Response(
            status=answer.status,
            text=answer.text,
            content_type="application/json",
            headers=answer.headers,
        )

    async def _pipeline(
        self, request: web.Request, rec: Received, body: Any, parse_error: str | None
    ) -> Answer:
        path = request.path
        if not path.startswith("/api/v1/"):
            raise ErrorAnswer(404, "NOT_FOUND", f"no route for {request.method} {path}")
        key = self._authenticate(request.headers.get("Authorization", ""))
        await self._apply_fault(path)
        self._take_token(key)
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and not 0 < len(idem) <= rules.MAX_IDEMPOTENCY_KEY:
            raise ErrorAnswer(400, "INVALID_PAYLOAD", "Idempotency-Key: must be 1-128 characters")
        handler, params = self._route(request.method, path)
        stored = self._replies.get((key, idem)) if idem is not None else None
        if stored is not None:  # the body is deliberately not compared
            rec.replay = True
            return Answer(stored.status, stored.text, {"X-Idempotent-Replay": "true"})
        if request.method == "POST":
            if parse_error is not None:
                raise ErrorAnswer(400, "INVALID_PAYLOAD", parse_error)
            if not isinstance(body, dict):
                raise ErrorAnswer(400, "INVALID_PAYLOAD", rules.not_an_object(body))
        try:
            answer = handler(ApiCall(body if isinstance(body, dict) else {}, params, request, idem))
        except rules.PayloadError as exc:
            raise ErrorAnswer(400, "INVALID_PAYLOAD", str(exc)) from None
        if idem is not None and 200 <= answer.status < 300:  # errors are retried afresh
            self._replies[(key, idem)] = answer
        late = rules.take_fault(self._faults, path, ("late",))
        if late is not None:
            await self._nap(late.seconds)
        return answer

    def _authenticate(self, header: str) -> str:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ErrorAnswer(401, "AUTH_REQUIRED", "Authorization: Bearer <API key> required")
        if token in self._revoked:
            raise ErrorAnswer(401, "REVOKED_KEY", "this API key has been revoked")
        if token != self._key:
            raise ErrorAnswer(401, "INVALID_KEY", "unknown API key")
        return token

    async def _apply_fault(self, path: str) -> None:
        fault = rules.take_fault(self._faults, path, ("fail", "hang", "drop"))
        if fault is None:
            return
        if fault.kind == "fail":
            raise ErrorAnswer(fault.status, fault.code, fault.message)
        if fault.kind == "hang":
            await self._nap(fault.seconds)
        raise _Drop

    def _take_token(self, key: str) -> None:
        retry_after = self._limiter.take(key)
        if retry_after is not None:
            message = f"over {self._limiter.rate:g} requests a minute (burst {self._limiter.burst})"
            raise ErrorAnswer(429, "RATE_LIMITED", message, {"Retry-After": str(retry_after)})

    def _route(self, method: str, path: str) -> tuple[_Handler, tuple[str, ...]]:
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is not None:
                if route_method == method:
                    return handler, match.groups()
                allowed.append(route_method)
        if allowed:
            raise ErrorAnswer(
                405, "METHOD_NOT_ALLOWED", f"{method} not allowed", {"Allow": ", ".join(allowed)}
            )
        raise ErrorAnswer(404, "NOT_FOUND", f"no route for {method} {path}")

    async def _nap(self, seconds: float) -> None:
        """asyncio.sleep that stop() cuts short, so no handler outlives the server."""
        if seconds <= 0 or self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
