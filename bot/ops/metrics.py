"""Prometheus metrics of one bridge, served by the tracker at `GET /metrics`.

Each bridge owns its registry (tests run several bridges in one process, and
the global default registry would mix their counters). Three sources:

- counters the services already keep (the poller's stats, the courier's
  outcomes, the join recorder's counts, ...), read when Prometheus scrapes, so
  the per-update path makes no metric calls at all;
- gauges read from the database (outbox depth, invite pools, ...), refreshed
  through the async Database right before each exposition is generated: the
  collector itself never touches SQLite, so a scrape never blocks the loop;
- the few events that have no stats object of their own and are rare enough to
  count directly: AdTarget answers and their latency, Telegram API errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.cluster.roles import Election
from bot.courier.service import Courier
from bot.invites.pool import InvitePool, PoolState
from bot.joins.recorder import LEAVE, JoinRecorder
from bot.joins.requests import JoinRequestApprover
from bot.polling.batches import PollerStats
from bot.tracker.visits import VisitRecorder
from storage import inbox, outbox, stay
from storage.db import Database
from storage.outbox import FORWARD_KINDS, OutboxCounts

log = logging.getLogger(__name__)

# An AdTarget answer takes milliseconds when near, seconds when it struggles, and
# is cut off at ADTARGET_TIMEOUT (10 s by default, 30 s at most is sensible).
ADTARGET_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOIN_KINDS = ("attributed", "campaign", "organic")
OUTBOX_STATES = ("pending", "sending", "delivered", "parked")
# What happened to a row after one send (courier.Courier.outcomes).
OUTCOMES = ("delivered", "replayed", "retried", "parked", "paused")

_TELEGRAM_ERROR_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (TelegramRetryAfter, "retry_after"),
    (TelegramMigrateToChat, "migrate_to_chat"),
    (TelegramBadRequest, "bad_request"),
    (TelegramNotFound, "not_found"),
    (TelegramConflictError, "conflict"),
    (TelegramUnauthorizedError, "unauthorized"),
    (TelegramForbiddenError, "forbidden"),
    (TelegramEntityTooLarge, "entity_too_large"),
    (TelegramServerError, "server_error"),
    (TelegramNetworkError, "network"),
    (ClientDecodeError, "decode"),
)


def telegram_error_kind(error: Exception) -> str:
    for kind, name in _TELEGRAM_ERROR_KINDS:
        if isinstance(error, kind):
            return name
    return "other"


class TelegramErrorCounter(BaseRequestMiddleware):
    """Counts every failed Bot API call by method and kind; the error goes on unchanged."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        try:
            return await make_request(bot, method)
        except Exception as error:
            self._counter.labels(method.__api_method__, telegram_error_kind(error)).inc()
            raise


@dataclass(frozen=True, slots=True)
class Watched:
    """The services whose own counters are read at scrape time."""

    poller: PollerStats
    joins: JoinRecorder
    join_requests: JoinRequestApprover
    courier: Courier
    pool: InvitePool
    visits: VisitRecorder
    # The tracker's count of links handed to visitors (read through a function:
    # the tracker is built after the metrics it serves).
    invites_handed_out: Callable[[], int]
    # Which process leads (several processes on PostgreSQL; alone on SQLite, this one).
    election: Election


@dataclass(slots=True)
class _Stored:
    """The database's side, as read right before an exposition."""

    ok: bool = False
    outbox: OutboxCounts | None = None
    failed_updates: int = 0
    pools: list[PoolState] = field(default_factory=list)
    stay_checks: dict[str, int] = field(default_factory=dict)
    at: float = 0.0


class Metrics:
    """The metrics of one bridge: built first in bot/factory.py build(), fed by the
    services, served by the tracker."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.adtarget_answers = Counter(
            "joinbridge_adtarget_answers",
            "AdTarget answers by HTTP status; status=error: none came (timeout, connection)",
            ["status"],
            registry=self.registry,
        )
        self.adtarget_seconds = Histogram(
            "joinbridge_adtarget_request_duration_seconds",
            "Time from sending a request to AdTarget to its answer (or failure)",
            buckets=ADTARGET_BUCKETS,
            registry=self.registry,
        )
        self.telegram_errors = Counter(
            "joinbridge_telegram_errors",
            "Failed Telegram Bot API calls by method and kind of error",
            ["method", "kind"],
            registry=self.registry,
        )
        self._db: Database | None = None
        self._watched: Watched | None = None
        self._stored = _Stored()
        self._scrape = asyncio.Lock()

    def adtarget_answered(self, status: str, seconds: float) -> None:
        """AdTargetClient.on_answer: one request's outcome and duration."""
        self.adtarget_answers.labels(status).inc()
        self.adtarget_seconds.observe(seconds)

    def telegram_middleware(self) -> TelegramErrorCounter:
        """For `bot.session.middleware(...)`: counts failed Bot API calls."""
        return TelegramErrorCounter(self.telegram_errors)

    def watch(self, reads: Database, watched: Watched) -> None:
        """`reads`: a read-only connection of the bridge's own (bot/factory.py): in WAL
        mode the scrape-time counts neither wait for the writer nor hold it (and
        ingest) while they count a large outbox."""
        self._db = reads
        self._watched = watched
        self.registry.register(_BridgeCollector(watched, lambda: self._stored))

    async def exposition(self) -> bytes:
        """The text Prometheus scrapes, with the database gauges read just now."""
        async with self._scrape:  # two scrapes at once read the database once each, in turn
            await self._refresh()
            return generate_latest(self.registry)

    async def _refresh(self) -> None:
        if self._db is None or self._watched is None:
            return
        try:
            counts = await outbox.counts(self._db)
            failed = await inbox.failed_count(self._db)
            pools = await self._watched.pool.states()
            checks = await stay.counts(self._db, [p.chat_id for p in pools])
        except Exception:
            # The counters are still worth serving; the database gauges go missing
            # and joinbridge_database_ok says why.
            log.exception("metrics: reading the database failed")
            self._stored = _Stored(ok=False, at=time.time())
            return
        by_state: dict[str, int] = {}
        for states in checks.values():
            for state, number in states.items():
                by_state[state] = by_state.get(state, 0) + number
        self._stored = _Stored(
            ok=True,
            outbox=counts,
            failed_updates=failed,
            pools=pools,
            stay_checks=by_state,
            at=time.time(),
        )


class _BridgeCollector(Collector):
    """Values read when scraped: the services' own counters and the stored gauges."""

    def __init__(self, watched: Watched, stored: Callable[[], _Stored]) -> None:
        self._watched = watched
        self._stored = stored

    def collect(self) -> Iterator[Metric]:
        yield from self._cluster()
        yield from self._updates()
        yield from self._joins_and_visits()
        yield from self._courier()
        yield from self._database(self._stored())

    def _cluster(self) -> Iterator[Metric]:
        election = self._watched.election
        role = GaugeMetricFamily(
            "joinbridge_leader",
            "1 while this process leads (polls Telegram, runs the courier, fills the"
            " invite pools), 0 while it stands by",
            labels=["identity"],
        )
        role.add_metric([election.status().identity], 1.0 if election.is_leader else 0.0)
        yield role
        yield CounterMetricFamily(
            "joinbridge_leader_elections",
            "Times this process was elected leader since it started",
            value=election.status().elections,
        )

    def _updates(self) -> Iterator[Metric]:
        poller = self._watched.poller
        yield _by_kind(
            "joinbridge_updates_received",
            "Telegram updates received (stored) by kind",
            poller.kinds,
        )
        yield _by_kind(
            "joinbridge_updates_failed",
            "Handler failures by kind of update (each failed attempt; the update is kept)",
            poller.failed_kinds,
        )
        yield _by_kind(
            "joinbridge_updates_unreadable",
            "Updates that could not be read, by kind: kept with their error and skipped",
            poller.unreadable_kinds,
        )
        yield _by_kind(
            "joinbridge_updates_untracked",
            "Joins, leaves and join requests in chats the bot does not track, ignored",
            {
                "chat_member": self._watched.joins.untracked,
                "chat_join_request": self._watched.join_requests.untracked,
            },
        )
        # From the start, 0 until the first answer: an alert on its age fires for a
        # bridge that never reached Telegram, too.
        yield GaugeMetricFamily(
            "joinbridge_telegram_last_poll_timestamp_seconds",
            "When getUpdates last answered (Unix time; 0: not yet since start)",
            value=poller.last_poll_ok_at or 0.0,
        )

    def _joins_and_visits(self) -> Iterator[Metric]:
        counts = self._watched.joins.counts
        yield _by_kind(
            "joinbridge_joins",
            "Joins recorded by kind (a redelivered join is not counted again)",
            {kind: counts.get(kind, 0) for kind in JOIN_KINDS},
        )
        yield CounterMetricFamily(
            "joinbridge_leaves", "Leaves recorded", value=counts.get(LEAVE, 0)
        )
        yield CounterMetricFamily(
            "joinbridge_visits_recorded",
            "Landing-page visits stored (forwarded to AdTarget, best effort)",
            value=self._watched.visits.recorded,
        )
        yield CounterMetricFamily(
            "joinbridge_invites_handed_out",
            "Invite links handed to visitors by the tracker",
            value=self._watched.invites_handed_out(),
        )
        pool = self._watched.pool
        yield CounterMetricFamily(
            "joinbridge_invite_links_minted", "Invite links minted for the pools", value=pool.minted
        )
        yield CounterMetricFamily(
            "joinbridge_invite_links_revoked",
            "Used personal invite links revoked after their join",
            value=pool.revoked,
        )

    def _courier(self) -> Iterator[Metric]:
        courier = self._watched.courier
        outcomes = CounterMetricFamily(
            "joinbridge_outbox_outcomes",
            "What one send did to an outbox row, by row kind (conversion: a join's"
            " conversion; visit, update_fbp, follow-ups) and outcome",
            labels=["kind", "outcome"],
        )
        found = dict(courier.outcomes)
        for outcome in OUTCOMES:  # present from the start, so rate() sees the first one
            found.setdefault(("conversion", outcome), 0)
        for (kind, outcome), number in sorted(found.items()):
            outcomes.add_metric([kind, outcome], number)
        yield outcomes
        dropped = CounterMetricFamily(
            "joinbridge_outbox_dropped",
            "Visit and update-fbp forwards dropped unsent, by kind and reason (cap:"
            " OUTBOX_FORWARDS_MAX were queued; age: older than OUTBOX_FORWARDS_MAX_AGE)",
            labels=["kind", "reason"],
        )
        for reason, counts in (("cap", self._watched.visits.dropped), ("age", courier.dropped)):
            for kind in FORWARD_KINDS:  # present from the start, as above
                dropped.add_metric([kind, reason], counts.get(kind, 0))
        yield dropped
        yield GaugeMetricFamily(
            "joinbridge_courier_paused",
            "1 while sending to AdTarget is paused (401, 402 or /pause), else 0",
            value=1 if courier.pause is not None else 0,
        )

    def _database(self, stored: _Stored) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "joinbridge_database_ok",
            "1 when the database gauges below were read at this scrape, else 0",
            value=1 if stored.ok else 0,
        )
        if not stored.ok or stored.outbox is None:
            return
        counts = stored.outbox
        depth = GaugeMetricFamily(
            "joinbridge_outbox_rows", "Outbox rows by state", labels=["state"]
        )
        for state in OUTBOX_STATES:
            depth.add_metric([state], getattr(counts, state))
        yield depth
        oldest = counts.oldest_pending_at
        yield GaugeMetricFamily(
            "joinbridge_outbox_oldest_pending_age_seconds",
            "Age of the oldest row not yet delivered (pending or sending); 0 when none",
            value=0.0 if oldest is None else max(stored.at - oldest, 0.0),
        )
        yield GaugeMetricFamily(
            "joinbridge_updates_waiting_retry",
            "Stored updates whose handler failed, waiting to be handled again",
            value=stored.failed_updates,
        )
        links = GaugeMetricFamily(
            "joinbridge_invite_pool_links",
            "Usable pre-minted invite links per channel",
            labels=["channel", "mode"],
        )
        target = GaugeMetricFamily(
            "joinbridge_invite_pool_target_links",
            "Links the pool keeps per channel (0: not minting there)",
            labels=["channel", "mode"],
        )
        for pool in stored.pools:
            links.add_metric([str(pool.chat_id), pool.mode], pool.size)
            target.add_metric([str(pool.chat_id), pool.mode], pool.target)
        yield links
        yield target
        checks = GaugeMetricFamily(
            "joinbridge_stay_checks",
            "Stay checks by state (pending: waiting for their due time)",
            labels=["state"],
        )
        for state, number in sorted(stored.stay_checks.items()):
            checks.add_metric([state], number)
        yield checks


def _by_kind(name: str, documentation: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["kind"])
    for kind, number in sorted(counts.items()):
        family.add_metric([kind], number)
    return family
