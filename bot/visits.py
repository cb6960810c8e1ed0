"""Visits from the landing page: stored locally (for the join that comes later)
and forwarded to AdTarget through the outbox, so the answer never waits on it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.logs import ids
from bot.tracker_input import VisitInput
from storage import outbox, visits
from storage.db import Database
from storage.visits import Attribution

log = logging.getLogger(__name__)

VISIT_PATH = "/events/visit"
UPDATE_FBP_PATH = "/events/update-fbp"
TEMP_ID_COOKIE = "adtarget_temp_id"
SESSION_COOKIE = "adtarget_session_id"
TEMP_ID_MAX_AGE = 365 * 24 * 3600
SESSION_MAX_AGE = 30 * 60

# AdTarget's body field for each VisitInput attribute, in its documented order.
_FORWARDED = (
    ("temp_id", "tempId"),
    ("client_session_id", "clientSessionId"),
    ("external_user_id", "externalUserId"),
    ("href", "href"),
    ("landing_page", "landingPage"),
    ("referrer", "referrer"),
    ("country", "country"),
    ("city", "city"),
    ("region", "region"),
    ("fbc", "fbc"),
    ("fbp", "fbp"),
    ("gclid", "gclid"),
    ("ttclid", "ttclid"),
    ("sccid", "sccid"),
    ("utm_source", "utmSource"),
    ("utm_medium", "utmMedium"),
    ("utm_campaign", "utmCampaign"),
    ("utm_content", "utmContent"),
    ("utm_term", "utmTerm"),
)

_SESSION_NAMESPACE = uuid.UUID("6d1f6f0e-3a0b-4c58-9a54-1d4b7f2c9e10")


@dataclass(frozen=True, slots=True)
class VisitAnswer:
    visit_id: str
    session_id: str
    temp_id: str
    client_session_id: str

    def as_json(self) -> dict[str, Any]:
        """AdTarget's visit answer, built locally."""
        return {
            "visitId": self.visit_id,
            "sessionId": self.session_id,
            "tempId": self.temp_id,
            "clientSessionId": self.client_session_id,
            "cookies": {
                "tempId": {
                    "name": TEMP_ID_COOKIE,
                    "value": self.temp_id,
                    "maxAge": TEMP_ID_MAX_AGE,
                    "sameSite": "Lax",
                },
                "session": {
                    "name": SESSION_COOKIE,
                    "value": self.client_session_id,
                    "maxAge": SESSION_MAX_AGE,
                    "sameSite": "Lax",
                },
            },
        }


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


@dataclass(slots=True)
class _Pending:
    attribution: Attribution
    row: outbox.NewRow
    done: asyncio.Future[None]


def _store(conn: sqlite3.Connection, batch: list[_Pending]) -> None:
    visits.upsert_many(conn, [p.attribution for p in batch])
    outbox.enqueue_many(conn, [p.row for p in batch])


class VisitRecorder:
    """Stores visits with group commit: the visits that arrive while a transaction
    is being written go together into the next one, so a busy landing page costs
    a few statements per batch, not per visit."""

    def __init__(self, db: Database, wake_courier: Callable[[], None]) -> None:
        self._db = db
        self._wake = wake_courier
        self._queue: list[_Pending] = []
        self._queued = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.recorded = 0  # visits committed, read by /metrics

    async def _write_loop(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                await self._db.write(functools.partial(_store, batch=batch))
            except Exception as error:
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(error)
                continue
            self.recorded += len(batch)
            for p in batch:
                if not p.done.done():
                    p.done.set_result(None)
            self._wake()

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def record(self, visit: VisitInput) -> VisitAnswer:
        temp_id = visit.temp_id or str(uuid.uuid4())
        client_session_id = visit.client_session_id or str(uuid.uuid4())
        visit_key = str(uuid.uuid4())
        body: dict[str, Any] = {"tempId": temp_id, "clientSessionId": client_session_id}
        for attribute, field in _FORWARDED[2:]:
            value = getattr(visit, attribute)
            if value:
                body[field] = value
        # The real visitor's IP and User-Agent travel as headers: AdTarget lets
        # them win over the body, and they never become our own request's.
        headers = {
            name: value
            for name, value in (
                ("X-Adtarget-Client-IP", visit.client_ip),
                ("X-Adtarget-Client-User-Agent", visit.user_agent),
            )
            if value
        }
        pending = _Pending(
            attribution_of(visit, temp_id, client_session_id),
            outbox.NewRow(
                kind="visit",
                path=VISIT_PATH,
                body=body,
                headers=headers or None,
                idempotency_key=f"jb-visit-{visit_key}",
                priority=1,
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
        return VisitAnswer(
            visit_id=visit_key,
            session_id=str(uuid.uuid5(_SESSION_NAMESPACE, client_session_id)),
            temp_id=temp_id,
            client_session_id=client_session_id,
        )

    async def update_fbp(self, temp_id: str, fbp: str) -> bool:
        """Patch the stored visit and forward; False when the tempId is unknown."""
        async with self._db.transaction() as conn:
            if not await visits.set_fbp(conn, temp_id, fbp):
                return False
            await outbox.enqueue(
                conn,
                outbox.NewRow(
                    kind="update_fbp",
                    path=UPDATE_FBP_PATH,
                    body={"tempId": temp_id, "fbp": fbp},
                    idempotency_key=f"jb-fbp-{uuid.uuid4()}",
                    priority=1,
                ),
            )
        self._wake()
        return True
