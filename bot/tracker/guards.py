"""What every tracker request passes before an endpoint sees it: errors answered as
JSON, header values checked, CORS, who the client is (bot/tracker/clients.py), the
per-client rate limit and the token. Endpoints live in bot/tracker/server.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from bot.adtarget import wire
from bot.settings import IPNetwork
from bot.tracker.clients import (
    Client,
    ClientRateLimiter,
    bears_token,
    identify,
    is_server_side,
)
from bot.tracker.input import (
    InputError,
    decoded_body,
    header_problem,
    parse_json_object,
)

log = logging.getLogger("bot.tracker.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The tracker serves AdTarget's own contract for the landing page.
VISIT_PATH = wire.API_PREFIX + wire.VISIT_PATH
# Set by the _limits middleware on every rate-limited request: who sent it.
CLIENT = web.RequestKey("client", Client)
# The parsed JSON body, once read (Guards.read_json).
BODY = web.RequestKey("body", dict[str, Any])


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    trusted_proxies: tuple[IPNetwork, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    token: str | None = None
    rate_per_minute: float = 120.0
    burst: int = 30
    visits_per_hour: int = 120  # per client: bounds what a flood can write
    body_timeout: float = 10.0  # seconds to send a body


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class Guards:
    def __init__(self, config: TrackerConfig) -> None:
        self._config = config
        self._limiter = ClientRateLimiter(config.rate_per_minute, config.burst)

    @property
    def middlewares(self) -> list[Middleware]:
        return [self._errors, self._headers, self._cors, self._limits]

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except InputError as error:
            return error_response(400, "INVALID_PAYLOAD", str(error))
        except _SlowBody:
            return error_response(
                408, "REQUEST_TIMEOUT", f"body: not received within {self._config.body_timeout:g} s"
            )
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

    async def _client(self, request: web.Request) -> Client:
        """Who sent it (bot/tracker/clients.py); a server-side caller's visit names its
        visitor in the body when not in the X-Adtarget-Client-* headers."""
        config = self._config
        body_ip = body_ua = None
        server_side = is_server_side(request, config.token, config.trusted_proxies)
        if server_side and request.path == VISIT_PATH:
            try:
                body = await self.read_json(request)
            except InputError:
                body = {}  # the handler rejects it, with the reason
            body_ip = _text(body.get("clientIp"))
            body_ua = _text(body.get("userAgent"))
        return identify(
            request,
            config.trusted_proxies,
            server_side=server_side,
            body_ip=body_ip,
            body_ua=body_ua,
        )

    async def read_json(self, request: web.Request) -> dict[str, Any]:
        """The body as a JSON object, read and parsed once per request: a server-side
        caller's visit is read by the rate limit (for the visitor it names) first."""
        if BODY in request:
            return request[BODY]
        try:
            async with asyncio.timeout(self._config.body_timeout):
                received = await request.read()
        except TimeoutError:
            raise _SlowBody from None
        raw = decoded_body(received, request.headers.get("Content-Encoding"))
        body = parse_json_object(raw, request.headers.get("Content-Type"))
        request[BODY] = body
        return body


def _auth_required() -> web.Response:
    return error_response(401, "AUTH_REQUIRED", "Authorization: Bearer <TRACKER_TOKEN> required")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class _SlowBody(Exception):
    """The client did not send its body within TrackerConfig.body_timeout."""


class QuietBadRequests(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses (a control character in a
    header, a broken request line) at ERROR with a traceback. On the open internet
    that is the client's mistake, answered with a 400, not the bridge's: one line
    at INFO, so real errors stay visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "malformed HTTP request refused: %s", (error.message,)
            record.exc_info = record.exc_text = None
        return True


def quiet_bad_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietBadRequests) for f in server_log.filters):
        server_log.addFilter(QuietBadRequests())
