"""Long polling that never loses an update.

aiogram's `start_polling` confirms a batch before (or regardless of whether)
its handlers succeed, retries a 401 forever and lets a network error in its
first getMe end the process. This loop keeps aiogram's Bot, methods and
Dispatcher, and changes the order: each getUpdates batch is committed to the
`updates` table first; only then does the next getUpdates carry the higher
offset that confirms it to Telegram. A second task feeds the stored batches to
the dispatcher in order and persists what the handlers returned. A handler that
raises leaves its update stored as `failed`, logged and counted, and retried
with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

from aiogram import Bot, Dispatcher
from aiogram.methods import DeleteWebhook, GetMe, GetUpdates
from aiogram.types import Update

from bot.logs import ids
from bot.telegram_calls import PersistentCaller
from bot.telegram_session import UpdatesSession, raw_json
from bot.waiting import wait_any
from storage import updates as inbox
from storage.db import Database

log = logging.getLogger(__name__)

ALLOWED_UPDATES = [
    "message",
    "callback_query",
    "chat_member",
    "my_chat_member",
    "chat_join_request",
]


class BatchSink(Protocol):
    """Persists what handlers returned, inside the transaction that marks their
    updates done; `after_commit` runs once that transaction committed.

    `persist` runs on the database's thread (`Database.write`): the whole batch
    is one round trip, and it must not touch the event loop."""

    def wants(self, result: object) -> bool: ...

    def persist(self, conn: sqlite3.Connection, items: Sequence[Any]) -> Any: ...

    def after_commit(self, persisted: Any) -> None: ...


PRUNE_EVERY = 3600.0
# How many stored batches polling may run ahead of handling.
HANDOFF_BATCHES = 4
# A stored update still `new` after this long was orphaned by a failed handling
# pass (the queue never holds one this long); the retry pass takes it up.
STALE_NEW_AFTER = 300.0
# A batch this small means little traffic: polling gives its handling (and the
# send that starts at its commit) a head start (`PollerConfig.head_start`)
# before spending ~0.5 ms of CPU on the next long poll, which would otherwise
# come first and slow every step after it. Bigger batches overlap the two.
SMALL_BATCH = 5


@dataclass(slots=True)
class _Handoff:
    updates: list[Update]
    handled: asyncio.Future[None]


@dataclass(slots=True)
class PollerStats:
    received: int = 0
    handled: int = 0
    failed: int = 0
    last_poll_ok_at: float | None = None
    consecutive_errors: int = 0
    username: str | None = None  # the bot's, from getMe
    # By kind of update, for /metrics: received counted once per batch (in C), not per update.
    kinds: Counter[str] = field(default_factory=Counter)
    failed_kinds: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class PollerConfig:
    timeout: int = 30
    limit: int = 100
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    update_retry_base: float = 5.0
    update_retry_cap: float = 3600.0
    head_start: float = 0.01


class Poller:
    def __init__(
        self,
        bot: Bot,
        dispatcher: Dispatcher,
        db: Database,
        sinks: Sequence[BatchSink],
        config: PollerConfig,
        workflow: dict[str, Any] | None = None,
        stats: PollerStats | None = None,
    ) -> None:
        self._bot = bot
        self._dp = dispatcher
        self._db = db
        self._sinks = list(sinks)
        self._config = config
        self._workflow = workflow or {}
        self._offset: int | None = None
        self.stats = stats or PollerStats()
        self._caller = PersistentCaller(
            bot, self.stats, backoff_base=config.backoff_base, backoff_cap=config.backoff_cap
        )

    async def run(self, stop: asyncio.Event) -> None:
        me = await self._caller.call_until_ok(GetMe(), stop, "getMe")
        if me is None:
            return
        log.info("logged in as @%s (id %d)", me.username, me.id)
        self.stats.username = me.username
        # Keep pending updates: they are joins we have not seen yet.
        if (
            await self._caller.call_until_ok(
                DeleteWebhook(drop_pending_updates=False), stop, "deleteWebhook"
            )
            is None
        ):
            return
        await self._retry_stored(stop, at_start=True)
        handoff: asyncio.Queue[_Handoff | None] = asyncio.Queue(maxsize=HANDOFF_BATCHES)
        handling = asyncio.create_task(self._handle_loop(handoff, stop), name="update-handling")
        try:
            await self._poll_loop(handoff, stop)
            # Batches already stored and queued are handled before we return; any
            # the shutdown grace cuts short stay `new` and are handled at next start.
            if not handling.done():
                await handoff.put(None)
            await handling
        finally:
            handling.cancel()

    async def _poll_loop(
        self, handoff: asyncio.Queue[_Handoff | None], stop: asyncio.Event
    ) -> None:
        """Fetch, store, hand over. A batch is confirmed (by the next getUpdates'
        offset) once it is committed to the inbox, not once it is handled: the
        next long poll overlaps with handling, and a crash in between loses
        nothing because unhandled stored updates are handled at start."""
        while not stop.is_set():
            method = GetUpdates(
                offset=self._offset,
                limit=self._config.limit,
                timeout=self._config.timeout,
                allowed_updates=ALLOWED_UPDATES,
            )
            batch = await self._caller.call_until_ok(
                method, stop, "getUpdates", request_timeout=self._config.timeout + 15
            )
            if batch is None:
                return
            self.stats.last_poll_ok_at = time.time()
            if not batch:
                continue
            try:
                already_done = await self._store(batch, self._raw_of(method))
            except Exception as error:
                # Nothing is confirmed: the same offset fetches this batch again.
                delay = self._caller.next_backoff()
                log.error(
                    "could not store updates %d-%d (%s: %s); not confirming them,"
                    " retrying in %.1f s",
                    batch[0].update_id,
                    batch[-1].update_id,
                    type(error).__name__,
                    error,
                    delay,
                    extra=ids(update_id=batch[0].update_id, last_update_id=batch[-1].update_id),
                )
                await wait_any(stop, timeout=delay)
                continue
            self._offset = batch[-1].update_id + 1
            fresh = [u for u in batch if u.update_id not in already_done]
            if fresh:
                item = _Handoff(fresh, asyncio.get_running_loop().create_future())
                # Waits while handling is HANDOFF_BATCHES behind: memory stays bounded
                # and a slow disk slows polling instead of piling up updates.
                await handoff.put(item)
                if len(fresh) <= SMALL_BATCH and self._config.head_start > 0:
                    # Capped: a slow handler (a /stats) does not hold polling back.
                    await asyncio.wait({item.handled}, timeout=self._config.head_start)

    def _raw_of(self, method: GetUpdates) -> list[dict[str, Any]] | None:
        session = self._bot.session
        return session.take_raw(method) if isinstance(session, UpdatesSession) else None

    async def _store(self, batch: list[Update], raw: list[dict[str, Any]] | None) -> set[int]:
        if raw is not None and [r.get("update_id") for r in raw] == [u.update_id for u in batch]:
            # As Telegram sent them: cheaper than serialising the parsed models again.
            pairs = zip(batch, raw, strict=True)
            rows = [(u.update_id, u.event_type, raw_json(r)) for u, r in pairs]
        else:
            rows = [
                (u.update_id, u.event_type, u.model_dump_json(exclude_unset=True, by_alias=True))
                for u in batch
            ]
        already_done = await inbox.store_batch(self._db, rows)
        # A redelivery of a handled update is not received again, for /metrics.
        fresh = [row for row in rows if row[0] not in already_done]
        self.stats.received += len(fresh)
        self.stats.kinds.update(map(itemgetter(1), fresh))
        for update_id in sorted(already_done):
            log.info(
                "update %d was already handled; skipped", update_id, extra=ids(update_id=update_id)
            )
        return already_done

    async def _handle_loop(
        self, handoff: asyncio.Queue[_Handoff | None], stop: asyncio.Event
    ) -> None:
        """Handle stored batches in order; between them, retry failed updates
        whose time came and prune old handled ones."""
        next_retry_pass = time.monotonic() + self._config.update_retry_base
        next_prune = time.monotonic()
        while True:
            timeout = max(min(next_retry_pass, next_prune) - time.monotonic(), 0.0)
            try:
                # Waiting in the queue itself (no helper task) wakes this task in one
                # step of the loop when a batch arrives; a timeout leaves the batch queued.
                async with asyncio.timeout(timeout):
                    batch = await handoff.get()
            except TimeoutError:
                pass
            else:
                if batch is None:
                    return
                await self._process_guarded([(u, 0) for u in batch.updates])
                batch.handled.set_result(None)
            if time.monotonic() >= next_retry_pass and not stop.is_set():
                await self._retry_stored(stop, at_start=False)
                next_retry_pass = time.monotonic() + self._config.update_retry_base
            if time.monotonic() >= next_prune:
                # Handled updates only matter while Telegram could still resend them.
                pruned = await inbox.prune_done(self._db)
                if pruned:
                    log.info("%d handled update(s) older than 48 h forgotten", pruned)
                next_prune = time.monotonic() + PRUNE_EVERY

    async def _process_guarded(self, updates: list[tuple[Update, int]]) -> None:
        try:
            await self._process(updates)
        except Exception:
            # Even recording the failure failed (the disk, most likely). The updates
            # stay stored as `new` and a later retry pass takes them up again.
            log.exception(
                "handling updates %d-%d failed; they stay stored and are retried in %.0f s",
                updates[0][0].update_id,
                updates[-1][0].update_id,
                STALE_NEW_AFTER,
                extra=ids(
                    update_id=updates[0][0].update_id, last_update_id=updates[-1][0].update_id
                ),
            )

    async def _process(self, updates: list[tuple[Update, int]]) -> None:
        """Feed updates to the handlers, then persist what they returned and mark the
        updates done, all in one transaction; failures stay stored for retry."""
        handled: list[tuple[Update, Any]] = []
        failed: list[tuple[Update, BaseException]] = []
        for update, _ in updates:
            try:
                result = await self._dp.feed_update(self._bot, update, **self._workflow)
            except Exception as error:  # any handler failure keeps the update
                failed.append((update, error))
            else:
                handled.append((update, result))
        try:
            await self._persist(handled)
        except Exception as batch_error:
            if len(handled) == 1:
                failed.append((handled[0][0], batch_error))
            elif handled:
                # Isolate the update that cannot be written; the others go through.
                for one in handled:
                    try:
                        await self._persist([one])
                    except Exception as one_error:
                        failed.append((one[0], one_error))
        attempts_of = {u.update_id: a for u, a in updates}
        for update, failure in failed:
            await self._fail(update, attempts_of.get(update.update_id, 0), failure)

    async def _persist(self, handled: list[tuple[Update, Any]]) -> None:
        update_ids = [u.update_id for u, _ in handled]

        def write(conn: sqlite3.Connection) -> list[tuple[BatchSink, Any]]:
            persisted: list[tuple[BatchSink, Any]] = []
            # A forget that committed after the batch was stored deleted its person's
            # updates; their handled results would bring that person back.
            stored = inbox.still_stored_in(conn, update_ids)
            for update_id in update_ids:
                if update_id not in stored:
                    log.info(
                        "update %d was forgotten while it was handled; its result is dropped",
                        update_id,
                        extra=ids(update_id=update_id),
                    )
            results = [result for u, result in handled if u.update_id in stored]
            for sink in self._sinks:
                items = [r for r in results if sink.wants(r)]
                if items:
                    persisted.append((sink, sink.persist(conn, items)))
            inbox.mark_done_in(conn, update_ids)
            return persisted

        persisted = await self._db.write(write)
        for sink, outcome in persisted:
            sink.after_commit(outcome)
        self.stats.handled += len(handled)

    async def _fail(self, update: Update, attempts: int, error: BaseException) -> None:
        delay = min(self._config.update_retry_cap, self._config.update_retry_base * 2**attempts)
        total = await inbox.mark_failed(
            self._db,
            update.update_id,
            error=f"{type(error).__name__}: {error}",
            retry_at=time.time() + delay,
        )
        self.stats.failed += 1
        self.stats.failed_kinds[update.event_type] += 1
        log.error(
            "update %d (%s) failed (attempt %d): %s: %s; kept, retrying in %.0f s",
            update.update_id,
            update.event_type,
            total,
            type(error).__name__,
            error,
            delay,
            exc_info=error,
            extra=ids(update_id=update.update_id),
        )

    async def _retry_stored(self, stop: asyncio.Event, *, at_start: bool) -> None:
        """Feed stored updates again: failed ones whose time came (at start: all of
        them), and those left unhandled by a crash or a failed handling pass."""
        now = float("inf") if at_start else time.time()
        new_before = now if at_start else now - STALE_NEW_AFTER
        seen: set[int] = set()
        while not stop.is_set():
            stored = await inbox.due_for_retry(self._db, now=now, new_before=new_before)
            due = [u for u in stored if u.update_id not in seen]
            if not due:
                return
            seen.update(u.update_id for u in due)
            for one in due:
                log.info(
                    "update %d: handling again (attempt %d)",
                    one.update_id,
                    one.attempts + 1,
                    extra=ids(update_id=one.update_id),
                )
            await self._process_guarded(
                [
                    (Update.model_validate(s.raw, context={"bot": self._bot}), s.attempts)
                    for s in due
                ]
            )
