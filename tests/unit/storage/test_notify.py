"""Waking another process's courier (`Transaction.notify`, `Database.listen`) and
claims two processes make at once (`FOR UPDATE SKIP LOCKED`), on a real PostgreSQL;
SQLite's side of the same seam (one process: nothing to send, nothing to hear)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psycopg
import pytest
from pydantic import SecretStr

from bot.adtarget.client import AdTargetClient
from bot.backoff import Backoff
from bot.courier.service import Courier
from bot.courier.verdicts import CourierConfig
from bot.simulators.adtarget import FakeAdTarget
from storage import outbox
from storage.db import Database, open_database_url
from storage.outbox import OUTBOX_CHANNEL
from storage.postgres import PgRow, PostgresDatabase, PostgresTransaction, _connect
from tests.harness import CHANNEL_ID, eventually

# Reconnections in a test come at once, not after the bridge's half second.
QUICK = Backoff(base=0.01, cap=0.2)


class Calls:
    """A listener's callback that counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    def reached(self, count: int) -> Callable[[], bool]:
        return lambda: self.count >= count


@asynccontextmanager
async def listening(db: Database, calls: Calls) -> AsyncIterator[asyncio.Task[None]]:
    """`db.listen` on OUTBOX_CHANNEL as a task, stopped (and awaited) afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(db.listen(OUTBOX_CHANNEL, calls, stop, retry=QUICK))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _row(key: str) -> outbox.NewRow:
    return outbox.NewRow(
        kind="conversion",
        path="/events/conversion",
        body={
            "telegramUserId": 9200001,
            "channelId": str(CHANNEL_ID),
            "eventType": "Lead",
            "eventTime": int(time.time()) * 1000,
        },
        idempotency_key=key,
        telegram_user_id=9200001,
        chat_id=CHANNEL_ID,
        event_type="Lead",
    )


async def _queue(db: Database, key: str) -> None:
    async with db.transaction() as tx:
        await outbox.enqueue(tx, _row(key))


async def _queue_then_fail(db: Database) -> None:
    async with db.transaction() as tx:
        await outbox.enqueue(tx, _row("rolled back"))
        raise RuntimeError("rolled back")


async def _listener_pid(other: Database) -> int:
    # The listener's session is the one whose last statement was its LISTEN.
    row = await other.fetchone(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    assert row is not None
    return int(row[0])


async def test_a_row_another_process_queues_wakes_the_listener(postgres_url: str) -> None:
    mine = await open_database_url(postgres_url)
    theirs = await open_database_url(postgres_url)  # another bridge process's handle
    calls = Calls()
    try:
        async with listening(mine, calls):
            await eventually(calls.reached(1), what="the call after LISTEN")
            await _queue(theirs, "a")
            await eventually(calls.reached(2), what="the notification of a queued row")

            # A rolled-back transaction notifies nobody. Notifications reach a
            # listener in commit order, so once the one committed after it has
            # arrived, and another after that, any from the rollback would have too.
            with pytest.raises(RuntimeError):
                await _queue_then_fail(theirs)
            await _queue(theirs, "b")
            await eventually(calls.reached(3), what="the row queued after the rollback")
            async with theirs.transaction() as tx:
                await outbox.enqueue_many(tx, [_row("c"), _row("d")])  # one notification
            await eventually(calls.reached(4), what="the rows queued together")
            assert calls.count == 4
        assert {r["idempotency_key"] for r in await theirs.fetchall("SELECT * FROM outbox")} == {
            "a",
            "b",
            "c",
            "d",
        }
    finally:
        await mine.close()
        await theirs.close()


async def test_rows_made_due_again_notify_too(postgres_url: str) -> None:
    """/retry of a parked row, and rows a stopping leader hands back, are due at
    once: the courier, wherever it runs, hears of them."""
    mine = await open_database_url(postgres_url)
    theirs = await open_database_url(postgres_url)
    calls = Calls()
    try:
        await _queue(theirs, "a")
        await _queue(theirs, "b")
        [parked] = await outbox.claim(theirs, limit=1, lease=30)
        await outbox.park(theirs, parked.id, attempt=1, reason="refused")
        [claimed] = await outbox.claim(theirs, limit=1, lease=30)
        async with listening(mine, calls):
            await eventually(calls.reached(1), what="the call after LISTEN")
            assert await outbox.retry_parked(theirs) == 1
            await eventually(calls.reached(2), what="the notification of /retry")
            await outbox.hand_back(theirs, [claimed.id])
            await eventually(calls.reached(3), what="the notification of the hand-back")
            assert await outbox.retry_parked(theirs) == 0  # nothing parked: no notification
            await outbox.hand_back(theirs, [claimed.id])  # nor for rows not claimed
            await _queue(theirs, "c")
            await eventually(calls.reached(4), what="the row queued last")
            assert calls.count == 4
    finally:
        await mine.close()
        await theirs.close()


async def test_the_listener_reconnects_and_wakes_after_its_session_is_ended(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    mine = await open_database_url(postgres_url)
    theirs = await open_database_url(postgres_url)
    calls = Calls()
    try:
        async with listening(mine, calls) as task:
            await eventually(calls.reached(1), what="the call after LISTEN")
            pid = await _listener_pid(theirs)
            # As a server restart or a failover would: the session ends under it.
            await theirs.fetchone("SELECT pg_terminate_backend(?, 5000)", (pid,))
            # Called once listening again: rows queued meanwhile were never notified.
            await eventually(calls.reached(2), what="the call after reconnecting")
            assert not task.done()
            assert await _listener_pid(theirs) != pid
            await _queue(theirs, "after")
            await eventually(calls.reached(3), what="a notification on the new session")
        assert any(
            "listening on joinbridge_outbox failed" in r.getMessage() for r in caplog.records
        )
    finally:
        await mine.close()
        await theirs.close()


class CountingRetry:
    """A `Retry` that counts the failures it is asked about (and waits little)."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def delay(self, failures: int) -> float:
        self.asked.append(failures)
        return 0.01


async def test_the_listener_retries_a_server_that_refuses_until_stopped(
    postgres_url: str,
) -> None:
    # A port nobody listens on: every attempt is refused.
    nowhere = PostgresDatabase(
        await _connect(postgres_url), "postgresql://joinbridge@127.0.0.1:9/x"
    )
    calls, retry, stop = Calls(), CountingRetry(), asyncio.Event()
    task = asyncio.create_task(nowhere.listen(OUTBOX_CHANNEL, calls, stop, retry=retry))
    try:
        await eventually(lambda: len(retry.asked) >= 3, what="three refused attempts")
        stop.set()
        await asyncio.wait_for(task, 10)
        # The run of failures grows (the backoff's input), and nothing was heard.
        assert retry.asked[:3] == [1, 2, 3]
        assert calls.count == 0
    finally:
        stop.set()
        await nowhere.close()


async def test_sqlite_sends_nothing_and_its_listener_only_waits(engine_db: Database) -> None:
    if engine_db.dialect.name != "sqlite":
        # PostgreSQL's side is the tests above; here the same calls must not fail.
        async with engine_db.transaction() as tx:
            await tx.notify(OUTBOX_CHANNEL)
        return
    calls = Calls()
    async with listening(engine_db, calls):
        await _queue(engine_db, "a")
    assert calls.count == 0


async def test_a_channel_name_is_a_plain_identifier(engine_db: Database) -> None:
    with pytest.raises(ValueError, match="identifier"):
        async with engine_db.transaction() as tx:
            await tx.notify("outbox; DROP TABLE outbox")
    with pytest.raises(ValueError, match="identifier"):
        await engine_db.listen("Outbox", Calls(), asyncio.Event(), retry=QUICK)


async def _idle_after(db: Database, pid: int, fragment: str) -> bool:
    """Whether session `pid` sits idle, its last statement containing `fragment`."""
    row = await db.fetchone("SELECT state, query FROM pg_stat_activity WHERE pid = ?", (pid,))
    return row is not None and row[0] == "idle" and fragment in row[1]


async def test_the_courier_sends_a_row_another_process_queued(
    postgres_url: str, adtarget: FakeAdTarget
) -> None:
    leader = await open_database_url(postgres_url)
    standby = await open_database_url(postgres_url)  # another bridge process's handle
    client = AdTargetClient(adtarget.url, SecretStr(adtarget.API_KEY), timeout=5.0)
    # Its own timers would look again only after an hour: only a wake sends the row.
    courier = Courier(leader, client, CourierConfig(poll_interval=3600.0))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(courier.listen(stop))]
    try:
        row = await leader.fetchone("SELECT pg_backend_pid()")
        assert row is not None
        writer = int(row[0])
        await eventually(lambda: _listener_idle(standby), what="the courier listening")
        tasks.append(asyncio.create_task(courier.run(stop)))
        # The courier has looked for due rows, found none, and sleeps (its last
        # statement: the next-due lookup). The row below can only come by a wake.
        await eventually(
            lambda: _idle_after(standby, writer, "min(next_attempt_at)"),
            what="the courier idle",
        )
        await _queue(standby, "from the standby")
        await adtarget.wait_for_conversions(1, timeout=10)
        assert adtarget.conversions[0]["idempotencyKey"] == "from the standby"
        await eventually(lambda: courier.delivered == 1, what="the delivery written back")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await client.aclose()
        await leader.close()
        await standby.close()


async def _listener_idle(other: Database) -> bool:
    row = await other.fetchone(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN %' AND state = 'idle'"
    )
    return row is not None and row[0] == 1


async def test_two_processes_claiming_at_once_never_claim_one_row(postgres_url: str) -> None:
    one = await open_database_url(postgres_url)
    two = await open_database_url(postgres_url)
    try:
        async with one.transaction() as tx:
            await outbox.enqueue_many(tx, [_row(f"k{n}") for n in range(60)])
        claimed: list[int] = []
        # The write lock (storage/postgres.py) runs the two claims of a round one
        # after the other; the rows each gets must still be its own.
        for _ in range(10):
            rounds = await asyncio.gather(
                outbox.claim(one, limit=4, lease=30), outbox.claim(two, limit=4, lease=30)
            )
            claimed += [row.id for rows in rounds for row in rows]
        assert len(claimed) == 60
        assert len(set(claimed)) == 60
    finally:
        await one.close()
        await two.close()


async def test_skip_locked_passes_over_rows_another_claim_holds(postgres_url: str) -> None:
    """Without the write lock (two transactions that never take it): the second
    claim neither waits for the first nor claims its rows, it takes the next ones.
    This is what keeps claims apart should that lock ever be made lighter."""
    db = await open_database_url(postgres_url)
    first = await _connect(postgres_url)
    second = await _connect(postgres_url)
    try:
        async with db.transaction() as tx:
            await outbox.enqueue_many(tx, [_row(f"k{n}") for n in range(5)])
        now = time.time()
        async with first.transaction(), second.transaction():
            mine = await outbox.claim_in(PostgresTransaction(first), limit=2, lease=30, now=now)
            # Without SKIP LOCKED this would wait for `first` (for ever, in this task).
            theirs = await asyncio.wait_for(
                outbox.claim_in(PostgresTransaction(second), limit=5, lease=30, now=now), 10
            )
        assert [r.id for r in mine] == [1, 2]
        assert [r.id for r in theirs] == [3, 4, 5]
    finally:
        await first.close()
        await second.close()
        await db.close()


async def test_a_pool_link_held_by_another_take_is_passed_over(postgres_url: str) -> None:
    """The pool's `take`, as above: two visitors served at once by two processes
    get two links, and the second never waits for the first."""
    from storage import channels, invite_pool, visits

    db = await open_database_url(postgres_url)
    first = await _connect(postgres_url)
    second = await _connect(postgres_url)
    try:
        async with db.transaction() as tx:
            await channels.upsert_in(
                tx,
                CHANNEL_ID,
                title="Chan",
                username=None,
                chat_type="channel",
                active=True,
                can_invite_users=True,
            )
            visit_ids = [
                await visits.upsert(tx, visits.Attribution(temp_id=f"t{n}")) for n in range(2)
            ]
        for n in range(2):
            await invite_pool.add(
                db,
                url=f"https://t.me/+pool{n}",
                chat_id=CHANNEL_ID,
                name=f"jb-{n}",
                creates_join_request=False,
                expire_date=int(time.time()) + 3600 + n,
            )

        async def take(conn: psycopg.AsyncConnection[PgRow], visit_id: int) -> str | None:
            link = await invite_pool.take(
                PostgresTransaction(conn),
                chat_id=CHANNEL_ID,
                creates_join_request=False,
                visit_id=visit_id,
                client_key=f"client-{visit_id}",
                quota=(10, 0.0),
                usable_after=time.time(),
            )
            return link.url if link else None

        async with first.transaction(), second.transaction():
            got = [
                await take(first, visit_ids[0]),
                await asyncio.wait_for(take(second, visit_ids[1]), 10),
            ]
        assert got == ["https://t.me/+pool0", "https://t.me/+pool1"]
    finally:
        await first.close()
        await second.close()
        await db.close()
