"""Handling a getUpdates batch: feed it to the dispatcher, then write what the
handlers returned together with the updates' states, in one transaction.

Two ways in, both used by the poller (bot/polling/poller.py):
- `process`, for updates already stored in the inbox: the usual way, and the
  only one for a handler that acts (replies, calls Telegram).
- `process_unstored`, for a small batch of chat_member updates while nothing
  else is being handled. Their handlers only read the update, so they can run
  first; the raw updates, the joins and their outbox rows then commit together,
  one transaction instead of two. The batch is still committed before
  the next getUpdates confirms it. A handler that raises leaves its update
  stored and failed, as the usual way does; one that takes too long, or a
  write that fails, sends the batch the usual way instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

from aiogram import Bot, Dispatcher
from aiogram.types import Update

from bot.backoff import Backoff
from bot.logs import ids
from storage import inbox
from storage.db import Database, Transaction

log = logging.getLogger(__name__)

# A stored update still `new` after this long was orphaned by a failed handling
# pass (the queue never holds one this long); the retry pass takes it up.
STALE_NEW_AFTER = 300.0

# (update_id, kind, raw JSON) as the inbox stores it.
InboxRow = tuple[int, str, str]


class BatchSink(Protocol):
    """Persists what handlers returned, inside the transaction that marks their
    updates done; `after_commit` runs once that transaction committed.

    `persist` gets the whole batch's results in one call, so it can write them a
    few statements per batch rather than a few per update."""

    def wants(self, result: object) -> bool: ...

    async def persist(self, tx: Transaction, items: Sequence[Any]) -> Any: ...

    def after_commit(self, persisted: Any) -> None: ...


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
    # Updates set aside as unreadable (stored with their error, never handled).
    unreadable: int = 0
    unreadable_kinds: Counter[str] = field(default_factory=Counter)


Handled = list[tuple[Update, Any]]
Failed = list[tuple[Update, BaseException]]
Persisted = list[tuple[BatchSink, Any]]


class BatchHandler:
    def __init__(
        self,
        bot: Bot,
        dispatcher: Dispatcher,
        db: Database,
        sinks: Sequence[BatchSink],
        stats: PollerStats,
        *,
        retry_base: float,
        retry_cap: float,
    ) -> None:
        self._bot = bot
        self._dp = dispatcher
        self._db = db
        self._sinks = list(sinks)
        self._stats = stats
        # Exact waits, no jitter: the poller retries failed updates in one pass
        # every `retry_base` seconds anyway, so their times spread by themselves.
        self._retry = Backoff(base=retry_base, cap=retry_cap)

    def count_received(
        self, rows: list[InboxRow], skipped: set[int], why: str = "already handled"
    ) -> None:
        # A redelivery of a stored update is not received again, for /metrics.
        fresh = [row for row in rows if row[0] not in skipped]
        self._stats.received += len(fresh)
        self._stats.kinds.update(map(itemgetter(1), fresh))
        for update_id in sorted(skipped):
            log.info("update %d was %s; skipped", update_id, why, extra=ids(update_id=update_id))

    async def process_unstored(
        self, batch: list[Update], rows: list[InboxRow], *, within: float
    ) -> bool:
        """Handle chat_member updates not stored yet and commit them with their
        results; False (nothing written) means: store and process them as usual.

        Polling waits meanwhile, so the handlers get `within` seconds: they only
        read the update, and one cut short is simply handled again the usual way."""
        try:
            async with asyncio.timeout(within):
                handled, failed = await self._feed(batch)
        except TimeoutError:
            log.info(
                "handling updates %d-%d took over %.0f ms; storing them first",
                batch[0].update_id,
                batch[-1].update_id,
                within * 1000,
                extra=ids(update_id=batch[0].update_id, last_update_id=batch[-1].update_id),
            )
            return False
        failed_ids = {u.update_id for u, _ in failed}
        stored_before: set[int] = set()

        try:
            async with self._db.transaction() as tx:
                stored_before.update(
                    await inbox.store_handled_in(tx, rows, failed_ids, time.time())
                )
                persisted = await self._persist_in(
                    tx, [h for h in handled if h[0].update_id not in stored_before]
                )
        except Exception as error:
            log.warning(
                "could not write updates %d-%d with their results (%s: %s); storing them first",
                batch[0].update_id,
                batch[-1].update_id,
                type(error).__name__,
                error,
                extra=ids(update_id=batch[0].update_id, last_update_id=batch[-1].update_id),
            )
            return False
        for sink, outcome in persisted:
            sink.after_commit(outcome)
        self.count_received(rows, stored_before, "stored before")
        self._stats.handled += len([u for u, _ in handled if u.update_id not in stored_before])
        for update, failure in failed:
            if update.update_id not in stored_before:
                await self._fail(update, 0, failure)
        return True

    async def process_guarded(self, updates: list[tuple[Update, int]]) -> None:
        try:
            await self.process(updates)
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

    async def process(self, updates: list[tuple[Update, int]]) -> None:
        """Feed stored updates to the handlers, then persist what they returned and
        mark the updates done, all in one transaction; failures stay stored for retry."""
        handled, failed = await self._feed([u for u, _ in updates])
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

    async def _feed(self, updates: Sequence[Update]) -> tuple[Handled, Failed]:
        handled: Handled = []
        failed: Failed = []
        for update in updates:
            try:
                result = await self._dp.feed_update(self._bot, update)
            except Exception as error:  # any handler failure keeps the update
                failed.append((update, error))
            else:
                handled.append((update, result))
        return handled, failed

    async def _persist(self, handled: Handled) -> None:
        update_ids = [u.update_id for u, _ in handled]

        async with self._db.transaction() as tx:
            # A forget that committed after the batch was stored deleted its person's
            # updates; their handled results would bring that person back.
            stored = await inbox.still_stored_in(tx, update_ids)
            for update_id in update_ids:
                if update_id not in stored:
                    log.info(
                        "update %d was forgotten while it was handled; its result is dropped",
                        update_id,
                        extra=ids(update_id=update_id),
                    )
            persisted = await self._persist_in(tx, [h for h in handled if h[0].update_id in stored])
            await inbox.mark_done_in(tx, update_ids)
        for sink, outcome in persisted:
            sink.after_commit(outcome)
        self._stats.handled += len(handled)

    async def _persist_in(self, tx: Transaction, handled: Handled) -> Persisted:
        results = [result for _, result in handled]
        persisted: Persisted = []
        for sink in self._sinks:
            items = [r for r in results if sink.wants(r)]
            if items:
                persisted.append((sink, await sink.persist(tx, items)))
        return persisted

    async def _fail(self, update: Update, attempts: int, error: BaseException) -> None:
        delay = self._retry.delay(attempts + 1)  # `attempts`: the failures before this one
        total = await inbox.mark_failed(
            self._db,
            update.update_id,
            error=f"{type(error).__name__}: {error}",
            retry_at=time.time() + delay,
        )
        self._stats.failed += 1
        self._stats.failed_kinds[update.event_type] += 1
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
