"""The tracker: the landing page's side of the bridge, an aiohttp app in the bot's process.

AdTarget's visit / update-fbp / invite contract, answered locally; a redirect
endpoint for a plain `<a href>` button; `/healthz`; `/metrics` (Prometheus),
for the operator: not rate-limited, not offered to browsers (CORS), behind
TRACKER_TOKEN when one is set. Every bad input is a 4xx
`{"error": {"code", "message"}}`, never a 500.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.invite_pool import InvitePool, PoolEmpty
from bot.tracker_client import (
    Client,
    ClientRateLimiter,
    bears_token,
    identify,
    in_networks,
    is_server_side,
)
from bot.tracker_health import Health
from bot.tracker_input import (
    MAX_BODY_BYTES,
    InputError,
    IPNetwork,
    decoded_body,
    header_problem,
    parse_channel_ref,
    parse_invite,
    parse_json_object,
    parse_update_fbp,
    parse_visit,
    visit_from_query,
)
from bot.visits import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    TEMP_ID_COOKIE,
    TEMP_ID_MAX_AGE,
    VisitAnswer,
    VisitRecorder,
    attribution_of,
)
from storage import channels
from storage.db import Database
from storage.visits import Attribution

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The metrics' text and its content type (bot/metrics.py).
Exposition = Callable[[], Awaitable[bytes]]
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
VISIT_PATH = "/api/v1/events/visit"
# Set by the _limits middleware on every rate-limited request: who sent it.
CLIENT = web.RequestKey("client", Client)


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    trusted_proxies: tuple[IPNetwork, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    token: str | None = None
    rate_per_minute: float = 120.0
    burst: int = 30


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class Tracker:
    def __init__(
        self,
        db: Database,
        visits: VisitRecorder,
        pool: InvitePool,
        health: Health,
        config: TrackerConfig,
        metrics: Exposition | None = None,
    ) -> None:
        self._db = db
        self._visits = visits
        self._pool = pool
        self._health = health
        self._config = config
        self._metrics = metrics  # None: METRICS_ENABLED=false, no /metrics route
        self._limiter = ClientRateLimiter(config.rate_per_minute, config.burst)
        self.invites_handed_out = 0

    def app(self) -> web.Application:
        # Bodies over the cap are refused by aiohttp before we read them; the
        # error middleware turns that into our 400.
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            # Bodies are inflated by decoded_body, under the size cap; aiohttp's own
            # decompression would fail a bad gzip body outside any handler.
            handler_args={"auto_decompress": False},
            middlewares=[self._errors, self._headers, self._cors, self._limits],
        )
        app.router.add_post(VISIT_PATH, self.visit)
        app.router.add_post("/api/v1/events/update-fbp", self.update_fbp)
        app.router.add_post("/api/v1/events/invite", self.invite)
        app.router.add_get("/track/invite", self.track_invite)
        app.router.add_get("/healthz", self.healthz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self.metrics)
        return app

    # ---- middlewares ------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except InputError as error:
            return error_response(400, "INVALID_PAYLOAD", str(error))
        except web.HTTPRequestEntityTooLarge:
            return error_response(400, "INVALID_PAYLOAD", "body: larger than 16 KB")
        except web.HTTPNotFound:
            return error_response(404, "NOT_FOUND", f"no route for {request.path}")
        except web.HTTPMethodNotAllowed as error:
            return error_response(
                405,
                "METHOD_NOT_ALLOWED",
                f"{request.method} is not allowed here",
                Allow=", ".join(sorted(error.allowed_methods)),
            )
        except web.HTTPException:
            raise
        except Exception:
            log.exception("tracker: %s %s failed", request.method, request.path)
            return error_response(500, "INTERNAL_ERROR", "internal error; it has been logged")

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Header values that are not valid text, or hold control characters, are
        refused before anything reads them (a token comparison, a log line, an
        onward header)."""
        for name, value in request.headers.items():
            problem = header_problem(value)
            if problem is not None:
                return error_response(400, "INVALID_PAYLOAD", f"header {name}: {problem}")
        return await handler(request)

    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics":
            return await handler(request)
        origin = request.headers.get("Origin")
        # Exact origins only: "*" is refused by the settings, and "null" (sandboxed
        # frames, file:// pages) is never a landing page.
        allowed = origin is not None and origin in self._config.allowed_origins
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not allowed:
                return error_response(403, "ORIGIN_NOT_ALLOWED", f"origin {origin} not allowed")
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if allowed and origin is not None:
            # Credentials let the browser keep the tempId and session cookies.
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def _limits(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if request.path == "/metrics":
            # Scraped every few seconds by one server: no rate limit, but the token.
            if not self._authorized(request):
                return _auth_required()
            return await handler(request)
        client = await self._client(request)
        request[CLIENT] = client
        wait = self._limiter.take(client.key)
        if wait > 0:
            return error_response(
                429,
                "RATE_LIMITED",
                "too many requests from this address",
                **{"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        if request.method == "POST" and not self._authorized(request):
            return _auth_required()
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        """True without TRACKER_TOKEN, else when the request carries it as a bearer token."""
        return not self._config.token or bears_token(request, self._config.token)

    # ---- the visitor --------------------------------------------------------------------

    async def _client(self, request: web.Request) -> Client:
        """Who sent it (bot/tracker_client.py); a server-side caller's visit names its
        visitor in the body when not in the X-Adtarget-Client-* headers."""
        config = self._config
        body_ip = body_ua = None
        if request.path == VISIT_PATH and is_server_side(
            request, config.token, config.trusted_proxies
        ):
            try:
                body = await self._json(request)
            except InputError:
                body = {}  # the handler rejects it, with the reason
            body_ip = _text(body.get("clientIp"))
            body_ua = _text(body.get("userAgent"))
        return identify(
            request, config.token, config.trusted_proxies, body_ip=body_ip, body_ua=body_ua
        )

    async def _json(self, request: web.Request) -> dict[str, Any]:
        raw = decoded_body(await request.read(), request.headers.get("Content-Encoding"))
        return parse_json_object(raw, request.headers.get("Content-Type"))

    def _with_cookies(
        self, request: web.Request, response: web.StreamResponse, answer: VisitAnswer
    ) -> None:
        """The two cookies AdTarget's answer describes, so the browser keeps its
        tempId and session on later calls."""
        secure = self._is_https(request)
        response.set_cookie(
            TEMP_ID_COOKIE,
            answer.temp_id,
            max_age=TEMP_ID_MAX_AGE,
            samesite="Lax",
            path="/",
            secure=secure,
        )
        response.set_cookie(
            SESSION_COOKIE,
            answer.client_session_id,
            max_age=SESSION_MAX_AGE,
            samesite="Lax",
            path="/",
            secure=secure,
        )

    def _is_https(self, request: web.Request) -> bool:
        if request.secure:
            return True
        peer = request.remote
        proto = request.headers.get("X-Forwarded-Proto", "")
        return (
            proto == "https"
            and peer is not None
            and in_networks(peer, self._config.trusted_proxies)
        )

    # ---- endpoints ----------------------------------------------------------------------

    async def visit(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        visit = parse_visit(body, now_ms=int(time.time() * 1000))
        client = request[CLIENT]  # the body's clientIp / userAgent, when believed
        answer = await self._visits.record(
            dataclasses.replace(visit, client_ip=client.ip, user_agent=client.user_agent)
        )
        response = web.json_response(answer.as_json())
        self._with_cookies(request, response, answer)
        return response

    async def update_fbp(self, request: web.Request) -> web.StreamResponse:
        temp_id, fbp = parse_update_fbp(await self._json(request))
        if not await self._visits.update_fbp(temp_id, fbp):
            return error_response(404, "VISIT_NOT_FOUND", f"no visit with tempId {temp_id}")
        return web.json_response({"success": True})

    async def invite(self, request: web.Request) -> web.StreamResponse:
        temp_id, client_session_id, channel_id = parse_invite(await self._json(request))
        client = request[CLIENT]
        visitor = Attribution(
            temp_id=temp_id or str(uuid.uuid4()),
            client_session_id=client_session_id,
            client_ip=client.ip,
            user_agent=client.user_agent,
        )
        url = await self._invite_url(channel_id, visitor)
        if isinstance(url, web.Response):
            return url
        return web.json_response({"inviteLink": url})

    async def _invite_url(self, channel_id: str, visitor: Attribution) -> str | web.Response:
        channel = await channels.resolve(self._db, channel_id)
        if channel is None or not channel.active:
            return error_response(
                404, "CHANNEL_NOT_FOUND", f"channelId: {channel_id} is not a tracked channel"
            )
        try:
            link = await self._pool.invite_for(channel, visitor)
        except PoolEmpty as error:
            seconds = str(max(1, round(error.retry_after + 0.5)))
            return error_response(
                503,
                "INVITE_POOL_EMPTY",
                f"no invite link available; Telegram asks to wait {seconds} s",
                **{"Retry-After": seconds},
            )
        self.invites_handed_out += 1
        return link.url

    async def track_invite(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        channel_id = parse_channel_ref(query.get("channelId", ""))
        temp_id = _uuid_or_none(query.get("tempId"))
        if query.get("tempId") and temp_id is None:
            raise InputError("tempId", "must be a UUID")
        # A mangled cookie is treated as absent rather than failing the click.
        temp_id = temp_id or _uuid_or_none(request.cookies.get(TEMP_ID_COOKIE))
        client = request[CLIENT]
        ip, ua = client.ip, client.user_agent
        answer: VisitAnswer | None = None
        if temp_id:
            visitor = Attribution(temp_id=temp_id, client_ip=ip, user_agent=ua)
        else:
            # A button without JavaScript: the click itself is the visit.
            href = request.headers.get("Referer") or str(request.url)
            found = visit_from_query(
                query, href=href, referrer=None, now_ms=int(time.time() * 1000)
            )
            found = dataclasses.replace(found, client_ip=ip, user_agent=ua)
            answer = await self._visits.record(found)
            visitor = attribution_of(found, answer.temp_id, answer.client_session_id)
        url = await self._invite_url(channel_id, visitor)
        if isinstance(url, web.Response):
            return url
        response = web.Response(status=302, headers={"Location": url})
        if answer is not None:
            self._with_cookies(request, response, answer)
        return response

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        report = await self._health.report()
        return web.json_response(report, status=200 if report["database"]["ok"] else 503)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        assert self._metrics is not None  # the route exists only with metrics
        text = await self._metrics()
        return web.Response(body=text, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _auth_required() -> web.Response:
    return error_response(401, "AUTH_REQUIRED", "Authorization: Bearer <TRACKER_TOKEN> required")


def _uuid_or_none(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
