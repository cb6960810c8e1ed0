"""Visits from the landing page: stored locally (for the join that comes later)
and forwarded to AdTarget through the outbox, so the answer never waits on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.adtarget.models import Cookie, UpdateFbpRequest, VisitAnswer, VisitCookies, VisitRequest
from bot.logs import ids
from bot.tracker.input import VisitInput
from storage import outbox, visits
from storage.db import Database, Transaction
from storage.visits import Attribution

log = logging.getLogger(__name__)

TEMP_ID_COOKIE = "adtarget_temp_id"
SESSION_COOKIE = "adtarget_session_id"
TEMP_ID_MAX_AGE = 365 * 24 * 3600
SESSION_MAX_AGE = 30 * 60

_SESSION_NAMESPACE = uuid.UUID("6d1f6f0e-3a0b-4c58-9a54-1d4b7f2c9e10")


@dataclass(frozen=True, slots=True)
class RecordedVisit:
    """A visit the tracker recorded: the ids it answers the landing page with."""

    visit_id: str
    session_id: str
    temp_id: str
    client_session_id: str

    def as_json(self) -> dict[str, Any]:
        """AdTarget's visit answer (bot/adtarget/models.py), built locally."""
        answer = VisitAnswer(
            visit_id=self.visit_id,
            session_id=self.session_id,
            temp_id=self.temp_id,
            client_session_id=self.client_session_id,
            cookies=VisitCookies(
                temp_id=Cookie(name=TEMP_ID_COOKIE, value=self.temp_id, max_age=TEMP_ID_MAX_AGE),
                session=Cookie(
                    name=SESSION_COOKIE, value=self.client_session_id, max_age=SESSION_MAX_AGE
                ),
            ),
        )
        return answer.model_dump(by_alias=True)


def visit_request(visit: VisitInput, temp_id: str, client_session_id: str) -> VisitRequest:
    """AdTarget's visit body for what the landing page sent."""
    return VisitRequest(
        temp_id=temp_id,
        client_session_id=client_session_id,
        external_user_id=visit.external_user_id,
        href=visit.href,
        landing_page=visit.landing_page,
        referrer=visit.referrer,
        client_ip=visit.client_ip,
        user_agent=visit.user_agent,
        country=visit.country,
        city=visit.city,
        region=visit.region,
        fbc=visit.fbc,
        fbp=visit.fbp,
        gclid=visit.gclid,
        ttclid=visit.ttclid,
        sccid=visit.sccid,
        utm_source=visit.utm_source,
        utm_medium=visit.utm_medium,
        utm_campaign=visit.utm_campaign,
        utm_content=visit.utm_content,
        utm_term=visit.utm_term,
    )


def attribution_of(visit: VisitInput, temp_id: str, client_session_id: str) -> Attribution:
    return Attribution(
        temp_id=temp_id,
        client_session_id=client_session_id,
        external_user_id=visit.external_user_id,
        href=visit.href,
        referrer=visit.referrer,
        fbc=visit.fbc,
        fbp=visit.fbp,
        gclid=visit.gclid,
        ttclid=visit.ttclid,
        sccid=visit.sccid,
        client_ip=visit.client_ip,
        user_agent=visit.user_agent,
        utm_source=visit.utm_source,
        utm_medium=visit.utm_medium,
        utm_campaign=visit.utm_campaign,
        utm_content=visit.utm_content,
        utm_term=visit.utm_term,
    )


# The queued forwards are counted at most this often (seconds; see ForwardCap).
RECOUNT_EVERY = 1.0


class ForwardCap:
    """Room for visit and update-fbp forwards under OUTBOX_FORWARDS_MAX.

    Counting what is queued walks up to `limit` index entries (~1.5 ms at
    10,000): too slow for every group commit of a busy landing page. The room
    counted once stays an upper bound while it is used up, since only this
    recorder queues forwards (an admin's /retry aside) and the courier only
    takes them away. So the count runs once the room is used up, and at most
    once per RECOUNT_EVERY: at the cap the courier frees a few rows a second,
    while a flood commits hundreds of batches a second.
    Used inside a transaction only, so never by two writers at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._room = 0
        self._count_after = 0.0  # monotonic

    def wants_count(self, wanted: int) -> bool:
        return wanted > self._room and time.monotonic() >= self._count_after

    def counted(self, queued: int) -> None:
        self._room = max(self.limit - queued, 0)
        self._count_after = time.monotonic() + RECOUNT_EVERY

    def take(self, wanted: int) -> int:
        """How many of `wanted` forwards may be queued; the rest are dropped."""
        granted = min(wanted, self._room)
        self._room -= granted
        return granted


@dataclass(slots=True)
class _Pending:
    attribution: Attribution
    row: outbox.NewRow
    done: asyncio.Future[None]


async def _store(tx: Transaction, batch: list[_Pending], cap: ForwardCap) -> list[str]:
    """Store the visits and queue their forwards while there is room; the kinds
    of the forwards dropped."""
    await visits.upsert_many(tx, [p.attribution for p in batch])
    if cap.wants_count(len(batch)):
        cap.counted(await outbox.queued_forwards_in(tx, limit=cap.limit))
    kept = cap.take(len(batch))
    await outbox.enqueue_many(tx, [p.row for p in batch[:kept]])
    return [p.row.kind for p in batch[kept:]]


def _settle(batch: list[_Pending], error: BaseException | None) -> None:
    for p in batch:
        if not p.done.done():
            if error is None:
                p.done.set_result(None)
            else:
                p.done.set_exception(error)


class VisitRecorder:
    """Stores visits with group commit: the visits that arrive while a transaction
    is being written go together into the next one, so a busy landing page costs
    a few statements per batch, not per visit."""

    def __init__(
        self, db: Database, wake_courier: Callable[[], None], *, forwards_max: int = 10_000
    ) -> None:
        self._db = db
        self._wake = wake_courier
        self._queue: list[_Pending] = []
        self._queued = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._cap = ForwardCap(forwards_max)
        self.recorded = 0  # visits committed, read by /metrics
        # Forwards dropped at the cap, by kind, read by /metrics.
        self.dropped: Counter[str] = Counter()
        self._warn_after = 0.0  # monotonic: one warning a minute while dropping

    async def _write_loop(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                await self._commit(batch)
            except Exception as error:
                if len(batch) == 1:
                    _settle(batch, error)
                    continue
                # One visit's failure must not fail its neighbours: each alone, then.
                log.warning(
                    "a batch of %d visits failed (%s: %s); writing each on its own",
                    len(batch),
                    type(error).__name__,
                    error,
                )
                for one in batch:
                    try:
                        await self._commit([one])
                    except Exception as one_error:
                        log.error(
                            "visit (tempId %s) could not be stored: %s: %s",
                            one.attribution.temp_id,
                            type(one_error).__name__,
                            one_error,
                            extra=ids(temp_id=one.attribution.temp_id),
                        )
                        _settle([one], one_error)

    async def _commit(self, batch: list[_Pending]) -> None:
        async with self._db.transaction() as tx:
            dropped = await _store(tx, batch, self._cap)
        self.recorded += len(batch)
        self._count_dropped(dropped)
        _settle(batch, None)
        self._wake()

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def record(self, visit: VisitInput) -> RecordedVisit:
        temp_id = visit.temp_id or str(uuid.uuid4())
        client_session_id = visit.client_session_id or str(uuid.uuid4())
        visit_key = str(uuid.uuid4())
        # The real visitor's IP and User-Agent travel as headers: AdTarget lets
        # them win over the body, and they never become our own request's.
        call = visit_request(visit, temp_id, client_session_id).call()
        pending = _Pending(
            attribution_of(visit, temp_id, client_session_id),
            outbox.NewRow(
                kind="visit",
                path=call.path,
                body=call.body,
                headers=call.headers,
                idempotency_key=f"jb-visit-{visit_key}",
                priority=outbox.FORWARD_PRIORITY,
            ),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="visit-writer")
        self._queued.set()
        # Answer only once the visit is committed.
        await pending.done
        log.info("visit recorded (tempId %s)", temp_id, extra=ids(temp_id=temp_id))
        return RecordedVisit(
            visit_id=visit_key,
            session_id=str(uuid.uuid5(_SESSION_NAMESPACE, client_session_id)),
            temp_id=temp_id,
            client_session_id=client_session_id,
        )

    async def update_fbp(self, temp_id: str, fbp: str) -> bool:
        """Patch the stored visit and forward; False when the tempId is unknown."""
        async with self._db.transaction() as tx:
            if not await visits.set_fbp(tx, temp_id, fbp):
                return False
            if self._cap.wants_count(1):
                self._cap.counted(await outbox.queued_forwards_in(tx, limit=self._cap.limit))
            kept = self._cap.take(1)
            if kept:
                call = UpdateFbpRequest(temp_id=temp_id, fbp=fbp).call()
                await outbox.enqueue(
                    tx,
                    outbox.NewRow(
                        kind="update_fbp",
                        path=call.path,
                        body=call.body,
                        idempotency_key=f"jb-fbp-{uuid.uuid4()}",
                        priority=outbox.FORWARD_PRIORITY,
                    ),
                )
        self._count_dropped([] if kept else ["update_fbp"])
        self._wake()
        return True

    def _count_dropped(self, kinds: list[str]) -> None:
        self.dropped.update(kinds)
        if kinds and time.monotonic() >= self._warn_after:
            self._warn_after = time.monotonic() + 60.0
            log.warning(
                "outbox: OUTBOX_FORWARDS_MAX (%d) visit and update-fbp forwards are queued;"
                " new ones are dropped until the courier catches up (%d so far)",
                self._cap.limit,
                sum(self.dropped.values()),
            )
