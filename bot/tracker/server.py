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

from aiohttp import web

from bot.adtarget import wire
from bot.invites.pool import InvitePool, PoolEmpty
from bot.tracker.clients import (
    ClientRateLimiter,
    bears_token,
    in_networks,
    is_local,
)
from bot.tracker.guards import (
    CLIENT,
    VISIT_PATH,
    Guards,
    TrackerConfig,
    error_response,
    quiet_bad_requests,
)
from bot.tracker.health import Health
from bot.tracker.input import (
    MAX_BODY_BYTES,
    InputError,
    parse_channel_ref,
    parse_invite,
    parse_update_fbp,
    parse_visit,
    visit_from_query,
)
from bot.tracker.visits import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    TEMP_ID_COOKIE,
    TEMP_ID_MAX_AGE,
    RecordedVisit,
    VisitRecorder,
    attribution_of,
)
from storage import channels
from storage.db import Database
from storage.invite_links import InviteLink
from storage.visits import Attribution

log = logging.getLogger(__name__)

# The metrics' text and its content type (bot/ops/metrics.py).
Exposition = Callable[[], Awaitable[bytes]]
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Tracker:
    def __init__(
        self,
        db: Database,
        visits: VisitRecorder,
        pool: InvitePool,
        health: Health,
        config: TrackerConfig,
        metrics: Exposition | None = None,
        storage_low: Callable[[], bool] = lambda: False,
    ) -> None:
        self._db = db
        self._visits = visits
        self._pool = pool
        self._health = health
        self._config = config
        self._metrics = metrics  # None: METRICS_ENABLED=false, no /metrics route
        self._guards = Guards(config)
        # A bucket that holds an hour's visits and refills over the hour: a quota.
        self._visit_quota = ClientRateLimiter(config.visits_per_hour / 60, config.visits_per_hour)
        # The watchdog's: under the free-disk threshold new visits are refused.
        self._storage_low = storage_low
        self.invites_handed_out = 0

    def app(self) -> web.Application:
        quiet_bad_requests()
        # Bodies over the cap are refused by aiohttp before we read them; the
        # error middleware turns that into our 400.
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            # Bodies are inflated by decoded_body, under the size cap; aiohttp's own
            # decompression would fail a bad gzip body outside any handler.
            handler_args={"auto_decompress": False},
            middlewares=self._guards.middlewares,
        )
        app.router.add_post(VISIT_PATH, self.visit)
        app.router.add_post(wire.API_PREFIX + wire.UPDATE_FBP_PATH, self.update_fbp)
        app.router.add_post(wire.API_PREFIX + wire.INVITE_PATH, self.invite)
        app.router.add_get("/track/invite", self.track_invite)
        app.router.add_get("/healthz", self.healthz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self.metrics)
        return app

    def _with_cookies(
        self, request: web.Request, response: web.StreamResponse, answer: RecordedVisit
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

    def _refuse_visit(self, request: web.Request) -> web.Response | None:
        """A new visit is refused when the disk is nearly full, or past the client's
        hourly quota; None when it may be recorded."""
        if self._storage_low():
            return error_response(
                503, "STORAGE_LOW", "the tracker is low on disk space; try again later"
            )
        wait = self._visit_quota.take(request[CLIENT].key)
        if wait > 0:
            return error_response(
                429,
                "RATE_LIMITED",
                f"more than {self._config.visits_per_hour} visits from this client in an hour",
                **{"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        return None

    async def visit(self, request: web.Request) -> web.StreamResponse:
        refused = self._refuse_visit(request)
        if refused is not None:
            return refused
        body = await self._guards.read_json(request)
        visit = parse_visit(body, now_ms=int(time.time() * 1000))
        client = request[CLIENT]  # the body's clientIp / userAgent, when believed
        answer = await self._visits.record(
            dataclasses.replace(visit, client_ip=client.ip, user_agent=client.user_agent)
        )
        response = web.json_response(answer.as_json())
        self._with_cookies(request, response, answer)
        return response

    async def update_fbp(self, request: web.Request) -> web.StreamResponse:
        temp_id, fbp = parse_update_fbp(await self._guards.read_json(request))
        if not await self._visits.update_fbp(temp_id, fbp):
            return error_response(404, "VISIT_NOT_FOUND", f"no visit with tempId {temp_id}")
        return web.json_response({"success": True})

    async def invite(self, request: web.Request) -> web.StreamResponse:
        temp_id, client_session_id, channel_id = parse_invite(await self._guards.read_json(request))
        client = request[CLIENT]
        visitor = Attribution(
            temp_id=temp_id or str(uuid.uuid4()),
            client_session_id=client_session_id,
            client_ip=client.ip,
            user_agent=client.user_agent,
        )
        link = await self._invite_link(channel_id, visitor, client.key)
        if isinstance(link, web.Response):
            return link
        # AdTarget's answer is {inviteLink}; `fallback` tells a landing page that
        # this is the channel's shared link, not one of the visitor's own.
        return web.json_response({"inviteLink": link.url, "fallback": link.fallback})

    async def _invite_link(
        self, channel_id: str, visitor: Attribution, client_key: str
    ) -> InviteLink | web.Response:
        """The visitor's personal link, or the channel's fallback link when it cannot
        have one (past the quota of `client_key`, Client.key); a channel is served
        only while tracked and active (the bot still its admin)."""
        channel = await channels.resolve(self._db, channel_id)
        if channel is None or not channel.active:
            return error_response(
                404, "CHANNEL_NOT_FOUND", f"channelId: {channel_id} is not a tracked channel"
            )
        try:
            link = await self._pool.invite_for(channel, visitor, client_key=client_key)
        except PoolEmpty as error:
            seconds = str(max(1, round(error.retry_after + 0.5)))
            return error_response(
                503,
                "INVITE_POOL_EMPTY",
                f"no invite link available; try again in {seconds} s",
                **{"Retry-After": seconds},
            )
        self.invites_handed_out += 1
        return link

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
        answer: RecordedVisit | None = None
        if temp_id:
            visitor = Attribution(temp_id=temp_id, client_ip=ip, user_agent=ua)
        else:
            # A button without JavaScript: the click itself is the visit.
            refused = self._refuse_visit(request)
            if refused is not None:
                return refused
            href = request.headers.get("Referer") or str(request.url)
            found = visit_from_query(
                query, href=href, referrer=None, now_ms=int(time.time() * 1000)
            )
            found = dataclasses.replace(found, client_ip=ip, user_agent=ua)
            answer = await self._visits.record(found)
            visitor = attribution_of(found, answer.temp_id, answer.client_session_id)
        link = await self._invite_link(channel_id, visitor, client.key)
        if isinstance(link, web.Response):
            return link
        response = web.Response(status=302, headers={"Location": link.url})
        if answer is not None:
            self._with_cookies(request, response, answer)
        return response

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """200 when the tracker can serve visits and invites, else 503 (Docker's
        HEALTHCHECK and load balancers go by the status). A degraded bridge (Telegram
        not polled, the courier paused) still serves: those are alerts and metrics.
        The details name channels and depths: only for the operator."""
        report = await self._health.report()
        storage_low = self._storage_low()
        serving = bool(report["database"]["ok"]) and not storage_low
        status = 200 if serving else 503
        if not self._may_see_details(request):
            return web.json_response({"status": "ok" if serving else "failing"}, status=status)
        report["tracker"] = {"serving": serving, "storageLow": storage_low}
        return web.json_response(report, status=status)

    def _may_see_details(self, request: web.Request) -> bool:
        """The TRACKER_TOKEN bearer; without a token, a client on this host (never a
        request a proxy forwarded from outside)."""
        config = self._config
        if config.token:
            return bears_token(request, config.token)
        return is_local(request, config.trusted_proxies)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        assert self._metrics is not None  # the route exists only with metrics
        text = await self._metrics()
        return web.Response(body=text, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _uuid_or_none(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None
