"""In-process fake of AdTarget's REST API (/work/shared/adtarget-api.md).

A real HTTP server on 127.0.0.1 (ephemeral port) so the bridge's own httpx
client, timeouts, retries and connection handling are exercised end to end.
Tests inspect what arrived (`received`, `conversions`, ...) and inject faults.

Request pipeline for /api/v1/* (the order matters for what a client sees):
auth -> injected fault (fail / hang / drop) -> rate limit -> Idempotency-Key
replay -> body check + handler -> process_then_delay -> `latency`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from . import adtarget_rules as rules

_IP_HEADER = "X-Adtarget-Client-IP"
_UA_HEADER = "X-Adtarget-Client-User-Agent"


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


class _ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.answer = _Answer(status, json.dumps({"error": {"code": code, "message": message}}))
        self.answer.headers.update(headers or {})


class _Drop(Exception):
    """Close the connection without writing any answer."""


@dataclass
class _Answer:
    status: int
    text: str  # JSON text: a stored idempotent answer is replayed byte for byte
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    body: dict[str, Any]
    params: tuple[str, ...]
    request: web.Request
    idempotency_key: str | None


_Handler = Callable[[_Call], _Answer]


def _new_id() -> str:
    return str(uuid.uuid4())


def _ok(payload: dict[str, Any]) -> _Answer:
    return _Answer(200, json.dumps(payload))


class FakeAdTarget:
    API_KEY: ClassVar[str] = "atk_live_abcd1234_0123456789abcdefghijklmnopqrstuv"

    def __init__(
        self,
        api_key: str = API_KEY,
        *,
        rate_per_minute: float = 300,
        burst: int = 50,
        channels: list[dict[str, Any]] | None = None,
    ) -> None:
        self.received: list[Received] = []
        self.conversions: list[dict[str, Any]] = []
        self.visits: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.values: list[dict[str, Any]] = []
        self.latency: float = 0.0
        self._key = api_key
        self._revoked: set[str] = set()
        self._limiter = rules.RateLimiter(rate_per_minute, burst)
        self._channels = json.loads(json.dumps(channels)) if channels is not None else None
        self._faults: list[rules.Fault] = []
        self._replies: dict[tuple[str, str], _Answer] = {}  # (api key, Idempotency-Key)
        self._leads: dict[int, dict[str, Any]] = {}
        # (user, channel) whose conversions carry an attribution signal: a warm
        # lead's later conversions inherit it.
        self._signalled: set[tuple[int, str]] = set()
        self._sessions: dict[str, str] = {}  # clientSessionId -> sessionId
        self._conversion_added = asyncio.Event()
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

    # A `timeout` argument is the agreed test-helper API (ASYNC109 targets library code).
    async def wait_for_conversions(
        self,
        n: int,
        timeout: float = 10.0,
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
        except _ApiError as exc:
            answer = exc.answer
        except _Drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # nothing reaches the client: the transport is closed
        except Exception as exc:
            # An unexpected failure in a handler still answers in AdTarget's
            # envelope ("every error is {"error": {code, message}}"), as a 500.
            answer = _ApiError(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}").answer
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
    ) -> _Answer:
        path = request.path
        if not path.startswith("/api/v1/"):
            raise _ApiError(404, "NOT_FOUND", f"no route for {request.method} {path}")
        key = self._authenticate(request.headers.get("Authorization", ""))
        await self._apply_fault(path)
        self._take_token(key)
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and not 0 < len(idem) <= rules.MAX_IDEMPOTENCY_KEY:
            raise _ApiError(400, "INVALID_PAYLOAD", "Idempotency-Key: must be 1-128 characters")
        handler, params = self._route(request.method, path)
        stored = self._replies.get((key, idem)) if idem is not None else None
        if stored is not None:  # the body is deliberately not compared
            rec.replay = True
            return _Answer(stored.status, stored.text, {"X-Idempotent-Replay": "true"})
        if request.method == "POST":
            if parse_error is not None:
                raise _ApiError(400, "INVALID_PAYLOAD", parse_error)
            if not isinstance(body, dict):
                raise _ApiError(400, "INVALID_PAYLOAD", rules.not_an_object(body))
        try:
            answer = handler(_Call(body if isinstance(body, dict) else {}, params, request, idem))
        except rules.PayloadError as exc:
            raise _ApiError(400, "INVALID_PAYLOAD", str(exc)) from None
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
            raise _ApiError(401, "AUTH_REQUIRED", "Authorization: Bearer <API key> required")
        if token in self._revoked:
            raise _ApiError(401, "REVOKED_KEY", "this API key has been revoked")
        if token != self._key:
            raise _ApiError(401, "INVALID_KEY", "unknown API key")
        return token

    async def _apply_fault(self, path: str) -> None:
        fault = rules.take_fault(self._faults, path, ("fail", "hang", "drop"))
        if fault is None:
            return
        if fault.kind == "fail":
            raise _ApiError(fault.status, fault.code, fault.message)
        if fault.kind == "hang":
            await self._nap(fault.seconds)
        raise _Drop

    def _take_token(self, key: str) -> None:
        retry_after = self._limiter.take(key)
        if retry_after is not None:
            message = f"over {self._limiter.rate:g} requests a minute (burst {self._limiter.burst})"
            raise _ApiError(429, "RATE_LIMITED", message, {"Retry-After": str(retry_after)})

    def _route(self, method: str, path: str) -> tuple[_Handler, tuple[str, ...]]:
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is not None:
                if route_method == method:
                    return handler, match.groups()
                allowed.append(route_method)
        if allowed:
            raise _ApiError(
                405, "METHOD_NOT_ALLOWED", f"{method} not allowed", {"Allow": ", ".join(allowed)}
            )
        raise _ApiError(404, "NOT_FOUND", f"no route for {method} {path}")

    async def _nap(self, seconds: float) -> None:
        """asyncio.sleep that stop() cuts short, so no handler outlives the server."""
        if seconds <= 0 or self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # ---- domain helpers --------------------------------------------------

    def _channel(self, channel_id: str) -> str:
        """The canonical (internal) channelId for an internal or Telegram (-100…) id."""
        if self._channels is None:
            return channel_id
        for channel in self._channels:
            if channel_id in (str(channel.get("channelId")), str(channel.get("telegramChannelId"))):
                return str(channel["channelId"])
        raise _ApiError(
            404, "CHANNEL_NOT_FOUND", f"channelId {channel_id!r} is not assigned to this site"
        )

    def _lead(self, user: int) -> dict[str, Any]:
        lead = self._leads.get(user)
        if lead is None:
            raise _ApiError(404, "LEAD_NOT_FOUND", f"no conversion for telegramUserId {user}")
        return lead

    def _record(
        self, user: int, channel: str, body: dict[str, Any]
    ) -> tuple[_Answer, dict[str, str]]:
        """Store a conversion on the lead; returns (answer, {conversionId, createdAt})."""
        now = rules.now_ms()
        stamp = rules.iso_ms(now)
        lead = self._leads.setdefault(
            user, {"telegramUserId": user, "firstSeenAt": stamp, "conversions": []}
        )
        cold = not any(c["channelId"] == channel for c in lead["conversions"])
        lead["lastSeenAt"] = stamp
        if "externalUserId" in body:
            lead["externalUserId"] = body["externalUserId"]
        inherited = (user, channel) in self._signalled
        entry, answer = rules.conversion(body, channel, cold, now, inherited_signal=inherited)
        if rules.has_signal(body):
            self._signalled.add((user, channel))
        lead["conversions"].append(entry)
        return _ok(answer), {"conversionId": entry["conversionId"], "createdAt": stamp}

    # ---- endpoints (synchronous: check-and-store cannot interleave) -----

    def _visit(self, call: _Call) -> _Answer:
        body = call.body
        rules.check_visit(body)
        headers = call.request.headers
        # Headers win over body; with neither, AdTarget only sees the caller itself.
        ip = headers.get(_IP_HEADER) or body.get("clientIp") or call.request.remote
        user_agent = headers.get(_UA_HEADER) or body.get("userAgent") or headers.get("User-Agent")
        temp_id = body.get("tempId") or _new_id()
        client_session = body.get("clientSessionId") or _new_id()
        session_id = self._sessions.setdefault(client_session, _new_id())
        ids = {"visitId": _new_id(), "sessionId": session_id, "tempId": temp_id}
        ids["clientSessionId"] = client_session
        landing = body.get("landingPage") or rules.landing_page(body["href"])
        self.visits.append(
            {**body, "clientIp": ip, "userAgent": user_agent, "landingPage": landing, **ids}
        )
        # The session cookie carries clientSessionId: the browser echoes it on later calls.
        cookies = {
            "tempId": rules.cookie("adtarget_temp_id", temp_id, 31536000),
            "session": rules.cookie("adtarget_session_id", client_session, 1800),
        }
        return _ok({**ids, "cookies": cookies})

    def _update_fbp(self, call: _Call) -> _Answer:
        rules.check_update_fbp(call.body)
        for visit in reversed(self.visits):  # the latest visit of that tempId
            if visit["tempId"] == call.body["tempId"]:
                visit["fbp"] = call.body["fbp"]
                return _ok({"success": True})
        return _ok({"success": False})

    def _invite(self, call: _Call) -> _Answer:
        rules.check_invite(call.body)
        self._channel(call.body["channelId"])
        return _ok({"inviteLink": f"https://t.me/+fake{secrets.token_urlsafe(12)}"})

    def _conversion(self, call: _Call) -> _Answer:
        body = call.body
        rules.check_conversion(body)
        user = body["telegramUserId"]
        answer, ids = self._record(user, self._channel(body["channelId"]), body)
        self.conversions.append({**body, **ids, "idempotencyKey": call.idempotency_key})
        self._conversion_added.set()
        return answer

    def _lead_event(self, call: _Call) -> _Answer:
        user = rules.user_id(call.params[0])
        body = call.body
        rules.check_conversion(body, lead_event=True)
        lead = self._lead(user)
        if "channelId" in body:
            channel = self._channel(body["channelId"])
        else:
            channel = lead["conversions"][-1]["channelId"]
        answer, ids = self._record(user, channel, body)
        record = {"channelId": channel, **body, "telegramUserId": user, **ids}
        self.events.append(record | {"idempotencyKey": call.idempotency_key})
        return answer

    def _value(self, call: _Call) -> _Answer:
        user, conversion_id = rules.user_id(call.params[0]), call.params[1]
        rules.check_value(call.body)
        lead = self._lead(user)
        for entry in lead["conversions"]:
            if entry["conversionId"] == conversion_id:
                entry["eventValue"] = call.body["value"]
                entry["eventCurrency"] = call.body["currency"]
                self.values.append(
                    {**call.body, "telegramUserId": user, "conversionId": conversion_id}
                )
                return _ok({"success": True})
        raise _ApiError(404, "CONVERSION_NOT_FOUND", f"no conversion {conversion_id!r} for {user}")

    def _get_lead(self, call: _Call) -> _Answer:
        lead = self._lead(rules.user_id(call.params[0]))
        order = ("telegramUserId", "firstSeenAt", "lastSeenAt", "externalUserId", "conversions")
        return _ok({k: lead[k] for k in order if k in lead})

    def _list_channels(self, call: _Call) -> _Answer:
        return _ok({"channels": self._channels or []})
