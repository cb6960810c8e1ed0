"""The tracker: the landing page's side of the bridge, an aiohttp app in the bot's process.

AdTarget's visit / update-fbp / invite contract, answered locally; a redirect
endpoint for a plain `<a href>` button; `/healthz`; `/metrics` (Prometheus),
for the operator: not rate-limited, not offered to browsers (CORS), behind
TRACKER_TOKEN when one is set. Every bad input is a 4xx
`{"error": {"code", "message"}}`, never a 500.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.invite_pool import InvitePool, PoolEmpty
from bot.tracker_health import Health
from bot.tracker_input import (
    MAX_BODY_BYTES,
    InputError,
    parse_invite,
    parse_json_object,
    parse_update_fbp,
    parse_visit,
    resolve_client,
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
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    trusted_proxies: tuple[Network, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    token: str | None = None
    rate_per_minute: float = 120.0
    burst: int = 30


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class IpRateLimiter:
    """A token bucket per client IP; idle buckets are forgotten."""

    def __init__(self, rate_per_minute: float, burst: int, max_clients: int = 50_000) -> None:
        self._rate = rate_per_minute / 60.0
        self._burst = float(burst)
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, ip: str) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic()
        tokens, updated = self._buckets.get(ip, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate)
        if tokens < 1.0:
            self._buckets[ip] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[ip] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_clients:
            full = now - self._burst / self._rate
            self._buckets = {k: v for k, v in self._buckets.items() if v[1] > full}
        return 0.0


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
        self._limiter = IpRateLimiter(config.rate_per_minute, config.burst)
        self.invites_handed_out = 0

    def app(self) -> web.Application:
        # Bodies over the cap are refused by aiohttp before we read them; the
        # error middleware turns that into our 400.
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[self._errors, self._cors, self._limits],
        )
        app.router.add_post("/api/v1/events/visit", self.visit)
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
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics":
            return await handler(request)
        origin = request.headers.get("Origin")
        allowed = origin is not None and (
            origin in self._config.allowed_origins or "*" in self._config.allowed_origins
        )
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
        wait = self._limiter.take(self._client_ip(request) or "unknown")
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
        if not self._config.token:
            return True
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self._config.token}"
        return hmac.compare_digest(given.encode(), expected.encode())

    # ---- the visitor --------------------------------------------------------------------

    def _client_ip(self, request: web.Request) -> str | None:
        ip, _ = self._client(request, None, None)
        return ip

    def _client(
        self, request: web.Request, body_ip: str | None, body_ua: str | None
    ) -> tuple[str | None, str | None]:
        return resolve_client(
            header_ip=request.headers.get("X-Adtarget-Client-IP"),
            header_ua=request.headers.get("X-Adtarget-Client-User-Agent"),
            body_ip=body_ip,
            body_ua=body_ua,
            peer_ip=request.remote,
            forwarded_for=request.headers.get("X-Forwarded-For"),
            request_ua=request.headers.get("User-Agent"),
            trusted_proxies=self._config.trusted_proxies,
        )

    async def _json(self, request: web.Request) -> dict[str, Any]:
        return parse_json_object(await request.read(), request.headers.get("Content-Type"))

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
            and _in_networks(peer, self._config.trusted_proxies)
        )

    # ---- endpoints ----------------------------------------------------------------------

    async def visit(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        visit = parse_visit(body, now_ms=int(time.time() * 1000))
        ip, ua = self._client(request, visit.client_ip, visit.user_agent)
        answer = await self._visits.record(dataclasses.replace(visit, client_ip=ip, user_agent=ua))
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
        ip, ua = self._client(request, None, None)
        visitor = Attribution(
            temp_id=temp_id or str(uuid.uuid4()),
            client_session_id=client_session_id,
            client_ip=ip,
            user_agent=ua,
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
        channel_id = query.get("channelId", "").strip()
        if not channel_id:
            raise InputError("channelId", "required")
        temp_id = _uuid_or_none(query.get("tempId"))
        if query.get("tempId") and temp_id is None:
            raise InputError("tempId", "must be a UUID")
        # A mangled cookie is treated as absent rather than failing the click.
        temp_id = temp_id or _uuid_or_none(request.cookies.get(TEMP_ID_COOKIE))
        ip, ua = self._client(request, None, None)
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


def _in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _uuid_or_none(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None
