"""The courier: drains the outbox to AdTarget.

Woken by new rows (not a multi-second poll): in this process by `wake`, from
other processes sharing a PostgreSQL database by their notifications (`listen`,
which the leader runs beside `run`). Paced by a token bucket, a few
sends in flight at once. Every outcome is written back to the row before the
next claim, so a crash at any point leaves the row either delivered or due to
be sent again with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bot.adtarget.client import AdTargetClient
from bot.backoff import Backoff
from bot.courier.lead_check import delivered_earlier, row_ids
from bot.courier.verdicts import (
    Accepted,
    CourierAlerts,
    CourierConfig,
    Outcome,
    Pause,
    Verdict,
    classify_answer,
    classify_exception,
)
from bot.logs import ids
from bot.waiting import Outstanding, wait_any
from storage import outbox, state
from storage.db import Database, Transaction
from storage.outbox import OUTBOX_CHANNEL, OutboxRow

log = logging.getLogger(__name__)

# A sweep for an expired lease runs this long after it ran out (clock granularity).
LEASE_SLACK = 0.5

PAUSE_KEY = "courier_paused"
IDLE_WAIT = 30.0
# Reconnecting the listener: soon after a blip, no faster than every 30 s while
# the server stays away (the timers still send what is due meanwhile).
LISTEN_RETRY = Backoff(base=0.5, cap=30.0, jitter=0.5)


class Courier:
    def __init__(
        self,
        db: Database,
        client: AdTargetClient,
        config: CourierConfig,
        alerts: CourierAlerts | None = None,
    ) -> None:
        self._alerts = alerts or CourierAlerts()
        self._db = db
        self._client = client
        self._config = config
        self._wake = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._pause: Pause | None = None
        self._probe_at = 0.0
        self._running = False
        # Sends started whose request is not written out yet (see `sends_written`).
        self._unsent = Outstanding()
        self.sent = 0
        self.delivered = 0
        # (row kind, outcome) after each send, read by /metrics.
        self.outcomes: Counter[tuple[str, str]] = Counter()
        # Forwards dropped past OUTBOX_FORWARDS_MAX_AGE, by kind, read by /metrics.
        self.dropped: Counter[str] = Counter()

    @property
    def pause(self) -> Pause | None:
        return self._pause

    def wake(self) -> None:
        """New rows are committed: look now rather than at the next timer."""
        self._wake.set()

    async def listen(self, stop: asyncio.Event) -> None:
        """Wake on rows other processes queue (their transactions notify
        OUTBOX_CHANNEL), until `stop`; on SQLite it only waits. Also wakes after
        each reconnection, for rows queued while the listener was away."""
        await self._db.listen(OUTBOX_CHANNEL, self.wake, stop, retry=LISTEN_RETRY)

    async def claim_in(self, tx: Transaction) -> list[OutboxRow]:
        """Claim due rows in the caller's transaction, as many as there is room
        for; the caller hands them to `send_claimed` once it has committed.

        Runs inside the transaction that queued a join's conversion: the send then
        starts without a claim of its own, the last separate transaction between
        a join and its POST.
        """
        if not self._running or self._pause is not None:
            return []
        room = self._config.concurrency - len(self._in_flight)
        if room <= 0:
            return []
        return await outbox.claim_in(tx, limit=room, lease=self._config.lease, now=time.time())

    async def sends_written(self) -> None:
        """Return once every send started so far is written out, or waits for
        the pacer. The poller waits for this (briefly) before building its next
        long poll, whose CPU would otherwise come first and slow the sends."""
        await self._unsent.none_left()

    def send_claimed(self, rows: Sequence[OutboxRow]) -> None:
        """Start sending rows `claim_in` claimed, after their transaction committed."""
        if not self._running:
            # Stopped in between: the rows stay claimed, and the rescue at the
            # next start makes them due again.
            return
        for row in rows:
            self._start(row)
        if not rows:
            # Nothing was claimed: the courier was full (a finishing send wakes
            # it) or its state was a step behind; look again to be sure. When
            # rows were claimed, the rest waits for a free slot either way.
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        rescued = await outbox.rescue_claimed(self._db, expired_only=not self._config.sole_process)
        if rescued:
            log.warning("outbox: %d row(s) claimed before a crash are due again", rescued)
        await self._load_pause()
        next_sweep = 0.0  # at once: forwards may have aged while the bridge was down
        self._running = True
        try:
            while not stop.is_set():
                if time.monotonic() >= next_sweep:  # paused or not
                    next_sweep = time.monotonic() + await self._sweep()
                wait = await self._dispatch_due()
                if wait > 0:
                    await wait_any(self._wake, stop, timeout=wait)
        finally:
            self._running = False
            await self._finish_in_flight()

    async def _dispatch_due(self) -> float:
        """Start sends for due rows; return how long to sleep before looking again."""
        self._wake.clear()
        now = time.time()
        if self._pause is not None:
            if self._pause.manual:
                return IDLE_WAIT
            if now < self._probe_at or self._in_flight:
                return min(max(self._probe_at - now, 0.2), IDLE_WAIT)
            # Probe with a single row; its outcome decides whether we resume.
            self._probe_at = now + self._probe_interval()
            rows = await outbox.claim(self._db, limit=1, lease=self._config.lease)
            if rows:
                log.info(
                    "courier paused (%s): probing with row %d",
                    self._pause.reason,
                    rows[0].id,
                    extra=row_ids(rows[0]),
                )
                self._start(rows[0])
            return 0.2 if rows else IDLE_WAIT
        free = self._config.concurrency - len(self._in_flight)
        if free <= 0:
            return IDLE_WAIT  # a finishing send sets the wake event
        rows = await outbox.claim(self._db, limit=free, lease=self._config.lease)
        for row in rows:
            self._start(row)
        if rows:
            return 0.0
        due = await outbox.next_due_at(self._db)
        if due is None:
            return self._config.poll_interval
        return min(max(due - time.time(), 0.0), self._config.poll_interval)

    def _start(self, row: OutboxRow) -> None:
        self._unsent.add(row.id)
        task = asyncio.create_task(self._deliver(row), name=f"courier-row-{row.id}")
        self._in_flight[row.id] = task
        task.add_done_callback(functools.partial(self._done, row.id))

    def _done(self, row_id: int, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(row_id, None)
        self._unsent.discard(row_id)
        self._wake.set()

    async def _finish_in_flight(self) -> None:
        """Let sends in flight finish within the grace period, hand back the rest."""
        if not self._in_flight:
            return
        tasks = list(self._in_flight.values())
        ids = list(self._in_flight)
        _, pending = await asyncio.wait(tasks, timeout=self._config.shutdown_grace)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        # A cancelled send may or may not have reached AdTarget: the row goes back
        # to pending and the same Idempotency-Key makes the resend safe.
        await outbox.hand_back(self._db, ids)
        if pending:
            log.info("courier: %d send(s) handed back at shutdown", len(pending))

    async def _deliver(self, row: OutboxRow) -> None:
        try:
            if await self._already_delivered(row):
                return
            self.sent += 1
            started = time.monotonic()
            written = functools.partial(self._unsent.discard, row.id)
            if not self._client.pacer.ready():
                written()  # it waits for the pacer, not for the CPU
            try:
                answer = await self._client.post(
                    row.path,
                    row.body,
                    idempotency_key=row.idempotency_key,
                    headers=row.headers,
                    on_sent=written,
                )
            except Exception as error:
                outcome = classify_exception(error)
                answer_body: Any = None
                replay = False
            else:
                outcome = classify_answer(answer, row)
                answer_body, replay = answer.body, answer.replay
            elapsed_ms = (time.monotonic() - started) * 1000
            await self._apply(row, outcome, answer_body, replay, elapsed_ms)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug or a database error: leave the row claimed; the lease rescue
            # sends it again later rather than losing it.
            log.exception("outbox row %d: delivery failed unexpectedly", row.id, extra=row_ids(row))

    async def _apply(
        self, row: OutboxRow, outcome: Outcome, body: Any, replay: bool, elapsed_ms: float
    ) -> None:
        verdict = outcome.verdict
        if verdict is Verdict.DELIVERED:
            accepted = Accepted.of(body)
            await outbox.mark_delivered(
                self._db,
                row.id,
                conversion_id=accepted.conversion_id,
                dispatched=accepted.dispatched,
                warning=accepted.warning,
                replayed=replay,
            )
            self.delivered += 1
            self.outcomes[row.kind, "replayed" if replay else "delivered"] += 1
            log.info(
                "outbox row %d delivered in %.0f ms (conversion %s%s)%s",
                row.id,
                elapsed_ms,
                accepted.conversion_id,
                ", replay" if replay else "",
                f"; AdTarget warns: {accepted.warning}" if accepted.warning else "",
                extra={**row_ids(row), **ids(conversion_id=accepted.conversion_id)},
            )
            if self._pause is not None:
                await self._resume("AdTarget accepted a probe")
            return
        if verdict is Verdict.RATE_LIMITED:
            wait = outcome.retry_after if outcome.retry_after is not None else 60.0
            self._client.pacer.hold(wait)
            self.outcomes[row.kind, "retried"] += 1
            log.warning(
                "outbox row %d: %s; waiting %.0f s",
                row.id,
                outcome.reason,
                wait,
                extra=row_ids(row),
            )
            await outbox.reschedule(
                self._db,
                row.id,
                attempt=row.attempts,
                next_attempt_at=time.time() + wait,
                error=outcome.reason,
            )
            return
        if verdict in (Verdict.PAUSE_AUTH, Verdict.PAUSE_BILLING):
            await outbox.hand_back(self._db, [row.id])
            self.outcomes[row.kind, "paused"] += 1
            await self._enter_pause(outcome)
            return
        if verdict is Verdict.PARK:
            log.error("outbox row %d parked: %s", row.id, outcome.reason, extra=row_ids(row))
            await outbox.park(self._db, row.id, attempt=row.attempts, reason=outcome.reason)
            self.outcomes[row.kind, "parked"] += 1
            self._alerts.parked(row.id, outcome.reason)
            return
        await self._retry_later(row, outcome)

    async def _retry_later(self, row: OutboxRow, outcome: Outcome) -> None:
        now = time.time()
        delay = self._config.backoff.delay(row.attempts)  # attempts: this one included
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        first = row.first_attempt_at or now
        if now + delay - first > self._config.retry_window:
            reason = (
                f"gave up after {row.attempts} attempts over {(now - first) / 3600:.1f} h;"
                f" last error: {outcome.reason}"
            )
            log.error("outbox row %d parked: %s", row.id, reason, extra=row_ids(row))
            await outbox.park(self._db, row.id, attempt=row.attempts, reason=reason)
            self.outcomes[row.kind, "parked"] += 1
            self._alerts.parked(row.id, reason)
            return
        log.warning(
            "outbox row %d attempt %d failed: %s; retrying in %.1f s",
            row.id,
            row.attempts,
            outcome.reason,
            delay,
            extra=row_ids(row),
        )
        await outbox.reschedule(
            self._db,
            row.id,
            attempt=row.attempts,
            next_attempt_at=now + delay,
            error=outcome.reason,
        )
        self.outcomes[row.kind, "retried"] += 1

    async def _sweep(self) -> float:
        """Rows whose lease expired are due again; forwards past their age go.
        Returns the seconds to the next sweep: the sweep interval, or sooner when a
        claimed row's lease runs out before that (a leader that died mid-delivery
        left its claims to the next one, which re-sends them then)."""
        await outbox.rescue_claimed(self._db, expired_only=True)
        kinds = await outbox.drop_aged_forwards(self._db, max_age=self._config.forwards_max_age)
        self.dropped.update(kinds)
        if kinds:
            log.warning("outbox: %d forward(s) past OUTBOX_FORWARDS_MAX_AGE dropped", len(kinds))
        lease_end = await outbox.earliest_lease_end(self._db)
        wait = self._config.sweep_interval
        if lease_end is not None:
            wait = min(wait, max(lease_end - time.time(), 0.0) + LEASE_SLACK)
        return wait

    async def _already_delivered(self, row: OutboxRow) -> bool:
        """Past the idempotency window a resend could duplicate: ask AdTarget first."""
        match = await delivered_earlier(
            self._client, row, idempotency_window=self._config.idempotency_window
        )
        if match is None:
            return False
        await outbox.mark_delivered(
            self._db, row.id, conversion_id=match, dispatched=None, warning=None, replayed=True
        )
        self.outcomes[row.kind, "replayed"] += 1
        return True

    def _probe_interval(self) -> float:
        if self._pause and self._pause.reason.startswith("HTTP 402"):
            return self._config.billing_probe_interval
        return self._config.auth_probe_interval

    async def _enter_pause(self, outcome: Outcome) -> None:
        if self._pause is None:
            log.error(
                "courier paused: AdTarget answered %s. Rows stay queued; probing every %.0f s",
                outcome.reason,
                self._config.billing_probe_interval
                if outcome.verdict is Verdict.PAUSE_BILLING
                else self._config.auth_probe_interval,
            )
        self._alerts.paused(outcome.reason)  # the notifier keeps repeats to one an hour
        self._pause = Pause(outcome.reason, time.time())
        self._probe_at = time.time() + self._probe_interval()
        await state.put(
            self._db, PAUSE_KEY, json.dumps({"reason": outcome.reason, "since": self._pause.since})
        )

    async def _resume(self, why: str) -> None:
        log.info("courier resumed: %s", why)
        self._pause = None
        await state.put(self._db, PAUSE_KEY, None)
        self._alerts.resumed()
        self._wake.set()

    async def pause_manually(self, who: str) -> None:
        """An admin's /pause: nothing is sent (not even probes) until /resume."""
        self._pause = Pause(f"paused by {who}", time.time(), manual=True)
        await state.put(
            self._db,
            PAUSE_KEY,
            json.dumps({"reason": self._pause.reason, "since": self._pause.since, "manual": True}),
        )
        log.warning("courier %s", self._pause.reason)

    async def resume_manually(self, who: str) -> None:
        await self._resume(f"resumed by {who}")

    async def _load_pause(self) -> None:
        saved = await state.get(self._db, PAUSE_KEY)
        if saved is None:
            return
        data = json.loads(saved)
        self._pause = Pause(str(data["reason"]), float(data["since"]), bool(data.get("manual")))
        # After a restart the key may have been fixed: probe at once.
        self._probe_at = 0.0
        log.warning("courier starts paused (%s); probing now", self._pause.reason)
