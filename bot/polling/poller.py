"""Long polling that never loses an update.

aiogram's `start_polling` confirms a batch before (or regardless of whether)
its handlers succeed, retries a 401 forever and lets a network error in its
first getMe end the process. This loop keeps aiogram's Bot, methods and
Dispatcher, and changes the order: each getUpdates batch is committed to the
`updates` table first; only then does the next getUpdates carry the higher
offset that confirms it to Telegram. A second task feeds the stored batches to
the dispatcher in order and persists what the handlers returned (see
bot/polling/batches.py). A handler that raises leaves its update stored as
`failed`, logged and counted, and retried with backoff.

With little traffic a lone join should reach AdTarget as soon as possible: a
small batch of chat_member updates that finds handling idle is handled and
committed in one go, and a small batch gets a head start before the next long
poll, whose ~0.5 ms of CPU would otherwise slow its handling and its sends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.methods import DeleteWebhook, GetMe, GetUpdates
from aiogram.types import Update

from bot.logs import ids
from bot.polling.batches import STALE_NEW_AFTER, BatchHandler, BatchSink, InboxRow, PollerStats
from bot.polling.calls import PersistentCaller
from bot.polling.reader import ReadBatch, Unreadable, UpdateReader
from bot.polling.session import UpdatesSession, raw_json
from bot.waiting import wait_any
from storage import inbox
from storage.db import Database

log = logging.getLogger(__name__)

ALLOWED_UPDATES = [
    "message",
    "callback_query",
    "chat_member",
    "my_chat_member",
    "chat_join_request",
]


PRUNE_EVERY = 3600.0
# How many stored batches polling may run ahead of handling.
HANDOFF_BATCHES = 4
# A batch this small means little traffic (see the module's docstring); bigger
# ones overlap the next long poll with their handling.
SMALL_BATCH = 5


@dataclass(slots=True)
class _Handoff:
    updates: list[Update]
    handled: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class PollerConfig:
    timeout: int = 30
    limit: int = 100
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    update_retry_base: float = 5.0
    update_retry_cap: float = 3600.0
    # How long a small batch's handling, and the sends it started, may hold the
    # next long poll back; 0 turns both fast paths off.
    head_start: float = 0.01


class Poller:
    def __init__(
        self,
        bot: Bot,
        dispatcher: Dispatcher,
        db: Database,
        sinks: Sequence[BatchSink],
        config: PollerConfig,
        *,
        stats: PollerStats | None = None,
        sends_written: Callable[[], Awaitable[None]],
        on_unreadable: Callable[[list[Unreadable]], None] = lambda _: None,
        may_poll: Callable[[], bool] = lambda: True,
    ) -> None:
        self._bot = bot
        self._db = db
        self._config = config
        self._offset: int | None = None
        self.stats = stats or PollerStats()
        self._handler = BatchHandler(
            bot,
            dispatcher,
            db,
            sinks,
            self.stats,
            retry_base=config.update_retry_base,
            retry_cap=config.update_retry_cap,
        )
        # The courier's: returns once the sends it has started are on the wire.
        self._sends_written = sends_written
        # Told of updates newly set aside as unreadable (the admins' alert).
        self._on_unreadable = on_unreadable
        # Asked before each getUpdates: with several processes only the leader may
        # poll (Telegram allows one consumer per token), and a leader that just woke
        # from a stall must find out before it sends one more.
        self._may_poll = may_poll
        session = bot.session
        self._reader = session.reader if isinstance(session, UpdatesSession) else UpdateReader()
        # The handling task waits for a batch, with none queued.
        self._handling_idle = False
        self._caller = PersistentCaller(
            bot, self.stats, backoff_base=config.backoff_base, backoff_cap=config.backoff_cap
        )

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            self._caller.close()

    async def _run(self, stop: asyncio.Event) -> None:
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
            if not self._may_poll():
                log.warning("no longer the leader: polling stops")
                return
            method = GetUpdates(
                offset=self._offset,
                limit=self._config.limit,
                timeout=self._config.timeout,
                allowed_updates=ALLOWED_UPDATES,
            )
            updates = await self._caller.call_until_ok(
                method, stop, "getUpdates", request_timeout=self._config.timeout + 15
            )
            if updates is None:
                return
            self.stats.last_poll_ok_at = time.time()
            read = self._read_of(method, updates)
            if read.last_update_id is None:
                continue
            batch = read.updates
            try:
                # Unreadable updates are committed before the offset moves past them.
                await self._set_aside(read.unreadable)
                if not batch:
                    self._offset = read.last_update_id + 1
                    continue
                rows = self._inbox_rows(batch, read)
                if self._at_once(batch) and await self._handler.process_unstored(
                    batch, rows, within=self._config.head_start
                ):
                    self._offset = read.last_update_id + 1
                    await self._give_way(None)
                    continue
                already_done = await self._store(rows)
            except Exception as error:
                # Nothing is confirmed: the same offset fetches this batch again.
                delay = self._caller.next_backoff()
                first = min(read.raw)
                log.error(
                    "could not store updates %d-%d (%s: %s); not confirming them,"
                    " retrying in %.1f s",
                    first,
                    read.last_update_id,
                    type(error).__name__,
                    error,
                    delay,
                    extra=ids(update_id=first, last_update_id=read.last_update_id),
                )
                await wait_any(stop, timeout=delay)
                continue
            self._offset = read.last_update_id + 1
            fresh = [u for u in batch if u.update_id not in already_done]
            if fresh:
                item = _Handoff(fresh, asyncio.get_running_loop().create_future())
                # Waits while handling is HANDOFF_BATCHES behind: memory stays bounded
                # and a slow disk slows polling instead of piling up updates.
                await handoff.put(item)
                if len(fresh) <= SMALL_BATCH:
                    await self._give_way(item.handled)

    def _at_once(self, batch: list[Update]) -> bool:
        return (
            self._config.head_start > 0
            and self._handling_idle
            and len(batch) <= SMALL_BATCH
            and all(u.event_type == "chat_member" for u in batch)
        )

    async def _give_way(self, handled: asyncio.Future[None] | None) -> None:
        """Before the next long poll: let a small batch be handled and the sends
        its commit started go out, up to the head start (a slow handler, a /stats
        say, or a paced send does not hold polling back)."""
        if self._config.head_start <= 0:
            return
        try:
            async with asyncio.timeout(self._config.head_start):
                if handled is not None:
                    await asyncio.shield(handled)
                await self._sends_written()
        except TimeoutError:
            pass

    def _read_of(self, method: GetUpdates, updates: list[Update]) -> ReadBatch:
        session = self._bot.session
        read = session.take_read(method) if isinstance(session, UpdatesSession) else None
        if read is not None:
            return read
        # Another session (aiogram's own) validated the answer whole: all readable.
        return ReadBatch(
            updates=updates,
            last_update_id=updates[-1].update_id if updates else None,
        )

    @staticmethod
    def _inbox_rows(batch: list[Update], read: ReadBatch) -> list[InboxRow]:
        # As Telegram sent them: cheaper than serialising the parsed models again.
        return [
            (
                u.update_id,
                u.event_type,
                raw_json(raw)
                if (raw := read.raw.get(u.update_id)) is not None
                else u.model_dump_json(exclude_unset=True, by_alias=True),
            )
            for u in batch
        ]

    async def _set_aside(self, unreadable: list[Unreadable]) -> None:
        """Store unreadable updates, with their errors, as never to be handled."""
        if not unreadable:
            return
        rows = [(u.update_id, u.kind, raw_json(u.raw), u.error) for u in unreadable]
        async with self._db.transaction() as tx:
            new_ids = await inbox.store_unreadable_in(tx, rows, time.time())
        fresh = [u for u in unreadable if u.update_id in new_ids]
        self._count_unreadable(fresh)

    def _count_unreadable(self, unreadable: list[Unreadable]) -> None:
        for one in unreadable:
            self.stats.unreadable += 1
            self.stats.unreadable_kinds[one.kind] += 1
            log.error(
                "update %d (%s) cannot be read: %s; kept as unreadable and skipped",
                one.update_id,
                one.kind,
                one.error,
                extra=ids(update_id=one.update_id),
            )
        if unreadable:
            self._on_unreadable(unreadable)

    async def _store(self, rows: list[InboxRow]) -> set[int]:
        already_done = await inbox.store_batch(self._db, rows)
        self._handler.count_received(rows, already_done)
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
            self._handling_idle = handoff.empty()
            timed_out = False
            try:
                # Waiting in the queue itself (no helper task) wakes this task in one
                # step of the loop when a batch arrives; a timeout leaves the batch queued.
                async with asyncio.timeout(timeout):
                    batch = await handoff.get()
            except TimeoutError:
                timed_out = True
            finally:
                self._handling_idle = False
            if not timed_out:
                if batch is None:
                    return
                await self._handler.process_guarded([(u, 0) for u in batch.updates])
                batch.handled.set_result(None)
            if time.monotonic() >= next_retry_pass and not stop.is_set():
                await self._retry_stored(stop, at_start=False)
                next_retry_pass = time.monotonic() + self._config.update_retry_base
            if time.monotonic() >= next_prune:
                # Handled updates only matter while Telegram could still resend them.
                pruned = await inbox.prune_old(self._db)
                if pruned:
                    log.info("%d old stored update(s) forgotten", pruned)
                next_prune = time.monotonic() + PRUNE_EVERY

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
            readable: list[tuple[Update, int]] = []
            for stored_update in due:
                read = self._reader.read_one(stored_update.raw, self._bot)
                if isinstance(read, Unreadable):
                    # Stored readable by an older version of the bridge, say.
                    await inbox.mark_unreadable(self._db, read.update_id, read.error)
                    self._count_unreadable([read])
                else:
                    readable.append((read, stored_update.attempts))
            if readable:
                await self._handler.process_guarded(readable)
