"""SQLite storage: migrations, the outbox's state machine, join natural keys, the inbox."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from storage import channels, inbox, invite_links, joins, outbox, visits
from storage.db import Database, migrate, open_database, schema_version


async def test_migrations_recorded_and_idempotent(db: Database) -> None:
    version = await schema_version(db)
    assert version >= 1
    assert await migrate(db) == version
    pragmas = await db.fetchall("PRAGMA journal_mode")
    assert pragmas[0][0] == "wal"
    assert (await db.fetchall("PRAGMA foreign_keys"))[0][0] == 1


async def _queue(db: Database, key: str) -> int:
    async with db.transaction() as conn:
        row_id = await outbox.enqueue(
            conn,
            outbox.NewRow(
                kind="conversion", path="/events/conversion", body={"a": 1}, idempotency_key=key
            ),
        )
    assert row_id is not None
    return row_id


async def test_claim_counts_attempt_and_leases(db: Database) -> None:
    first = await _queue(db, "k1")
    await _queue(db, "k2")
    claimed = await outbox.claim(db, limit=1, lease=30)
    assert [r.id for r in claimed] == [first]
    assert claimed[0].attempts == 1
    assert claimed[0].first_attempt_at is not None
    # A claimed row is not handed out twice.
    again = await outbox.claim(db, limit=5, lease=30)
    assert [r.id for r in again] == [first + 1]
    assert await outbox.claim(db, limit=5, lease=30) == []


async def test_reschedule_keeps_errors_list(db: Database) -> None:
    row_id = await _queue(db, "k")
    for attempt in range(1, 25):
        (row,) = await outbox.claim(db, limit=1, lease=30, now=time.time() + 10 * attempt)
        await outbox.reschedule(
            db, row.id, attempt=row.attempts, next_attempt_at=0, error=f"HTTP 503 #{attempt}"
        )
    stored = await outbox.get(db, row_id)
    assert stored is not None
    errors = json.loads(stored["errors"])
    assert len(errors) == outbox.MAX_ERRORS_KEPT
    assert errors[-1]["error"] == "HTTP 503 #24"
    assert errors[-1]["attempt"] == 24
    assert stored["state"] == "pending"
    assert stored["attempts"] == 24


async def test_park_and_retry(db: Database) -> None:
    row_id = await _queue(db, "k")
    (row,) = await outbox.claim(db, limit=1, lease=30)
    await outbox.park(db, row.id, attempt=1, reason="HTTP 400 INVALID_PAYLOAD: x")
    counts = await outbox.counts(db)
    assert (counts.parked, counts.pending) == (1, 0)
    assert await outbox.claim(db, limit=5, lease=30) == []
    assert await outbox.retry_parked(db, row_id) == 1
    assert [r.id for r in await outbox.claim(db, limit=5, lease=30)] == [row_id]


async def test_rescue_after_crash_and_expired_lease(db: Database) -> None:
    a = await _queue(db, "a")
    await outbox.claim(db, limit=1, lease=1000)
    assert await outbox.rescue_claimed(db, expired_only=True) == 0
    assert await outbox.rescue_claimed(db, expired_only=False) == 1
    (row,) = await outbox.claim(db, limit=1, lease=-1.0)  # a lease already over
    assert row.id == a
    assert row.attempts == 2
    assert await outbox.rescue_claimed(db, expired_only=True) == 1


async def test_hand_back_does_not_count_the_attempt(db: Database) -> None:
    row_id = await _queue(db, "a")
    await outbox.claim(db, limit=1, lease=30)
    await outbox.hand_back(db, [row_id])
    (row,) = await outbox.claim(db, limit=1, lease=30)
    assert row.attempts == 1


async def test_idempotency_key_unique(db: Database) -> None:
    await _queue(db, "same")
    async with db.transaction() as conn:
        again = await outbox.enqueue(
            conn, outbox.NewRow(kind="conversion", path="/x", body={}, idempotency_key="same")
        )
    assert again is None
    assert (await outbox.counts(db)).pending == 1


async def test_join_natural_keys(db: Database) -> None:
    await _add_channel(db)
    async with db.transaction() as conn:
        visit_id = await visits.upsert(conn, visits.Attribution(temp_id="t1", fbc="fb.1.1.x"))
        link = await invite_links.insert(
            conn,
            url="https://t.me/+abc",
            chat_id=-1001,
            kind="visitor",
            name="jb-x",
            visit_id=visit_id,
            campaign=None,
            creates_join_request=False,
            expire_date=None,
        )

    def join(kind: str, link_id: int | None, joined_at: int) -> joins.NewJoin:
        return joins.NewJoin(
            chat_id=-1001,
            user_id=7,
            kind=kind,
            link_id=link_id,
            link_url=link.url if link_id else None,
            via_join_request=False,
            joined_at=joined_at,
            update_id=1,
        )

    first = await db.write(lambda conn: joins.insert_many(conn, [join("attributed", link.id, 10)]))
    # Same chat, user and link: the same join, whatever the date says; and a
    # duplicate inside one batch is new only once.
    later = [join("attributed", link.id, 11), join("organic", None, 20), join("organic", None, 20)]
    second = await db.write(lambda conn: joins.insert_many(conn, later))
    leave = joins.NewLeave(chat_id=-1001, user_id=7, left_at=30, update_id=2)
    await db.write(lambda conn: joins.record_leaves(conn, [leave, leave]))
    assert list(first) == [0]
    assert list(second) == [1]
    assert (await db.fetchall("SELECT count(*) FROM leaves"))[0][0] == 1
    rows = await db.fetchall("SELECT left_at FROM joins ORDER BY id")
    assert [r[0] for r in rows] == [30, 30]


async def _add_channel(db: Database, chat_id: int = -1001) -> None:
    await db.write(
        lambda conn: channels.upsert_in(
            conn,
            chat_id,
            title="T",
            username=None,
            chat_type="channel",
            active=True,
            can_invite_users=True,
        )
    )


async def test_a_batch_of_new_joins_gets_each_its_own_id(db: Database) -> None:
    # All new: the ids are read off the table's maximum, not back from the rows.
    rows = [
        joins.NewJoin(
            chat_id=-1001,
            user_id=user_id,
            kind="organic",
            link_id=None,
            link_url=None,
            via_join_request=False,
            joined_at=100 + user_id,
            update_id=user_id,
        )
        for user_id in (5, 3, 9)
    ]
    await _add_channel(db)
    await db.write(lambda conn: joins.insert_many(conn, rows[:1]))
    second = await db.write(lambda conn: joins.insert_many(conn, rows[1:]))
    stored = {r[0]: r[1] for r in await db.fetchall("SELECT id, user_id FROM joins")}
    assert {index: stored[join_id] for index, join_id in second.items()} == {0: 3, 1: 9}


async def test_links_are_found_with_the_visit_they_were_handed_to(db: Database) -> None:
    await _add_channel(db)
    async with db.transaction() as conn:
        visit_id = await visits.upsert(
            conn, visits.Attribution(temp_id="t9", fbc="fb.1.1.z", user_agent="UA")
        )
        handed = await invite_links.insert(
            conn,
            url="https://t.me/+handed",
            chat_id=-1001,
            kind="visitor",
            name="jb-h",
            visit_id=visit_id,
            campaign=None,
            creates_join_request=True,
            expire_date=123,
        )
        await invite_links.insert(
            conn,
            url="https://t.me/+campaign",
            chat_id=-1001,
            kind="campaign",
            name="spring",
            visit_id=None,
            campaign="spring",
            creates_join_request=False,
            expire_date=None,
        )
    urls = ["https://t.me/+handed", "https://t.me/+campaign", "https://t.me/+unknown"]
    found = await db.write(lambda conn: invite_links.find_with_visits(conn, urls))
    assert set(found) == set(urls[:2])
    link, visit = found["https://t.me/+handed"]
    assert link == handed
    assert visit == visits.Attribution(temp_id="t9", fbc="fb.1.1.z", user_agent="UA")
    campaign, none = found["https://t.me/+campaign"]
    assert (campaign.kind, campaign.campaign, none) == ("campaign", "spring", None)


async def test_handled_updates_stored_with_their_results_tell_which_were_stored_before(
    db: Database,
) -> None:
    await inbox.store_batch(db, [(1, "chat_member", '{"update_id": 1}')])
    batch = [(n, "chat_member", f'{{"update_id": {n}}}') for n in (1, 2, 3)]
    before = await db.write(
        lambda conn: inbox.store_handled_in(conn, batch, failed={3}, now=time.time())
    )
    assert before == {1}
    states = await db.fetchall("SELECT update_id, state FROM updates ORDER BY update_id")
    # 1 stays as the retry pass owns it; 3 failed and is recorded as such next.
    assert [tuple(r) for r in states] == [(1, "new"), (2, "done"), (3, "new")]
    again = await db.write(
        lambda conn: inbox.store_handled_in(conn, batch[1:], failed=set(), now=time.time())
    )
    assert again == {2, 3}


async def test_an_outbox_body_orjson_cannot_encode_is_kept(db: Database) -> None:
    row = outbox.NewRow(
        kind="conversion", path="/c", body={"userAgent": "bad \ud800 text"}, idempotency_key="s"
    )
    await db.write(lambda conn: outbox.enqueue_many(conn, [row]))
    stored = (await db.fetchall("SELECT body FROM outbox"))[0][0]
    assert json.loads(stored) == {"userAgent": "bad \ud800 text"}


async def test_claims_and_the_next_due_time_seek_past_a_backlog_that_is_backing_off(
    db: Database,
) -> None:
    # AdTarget down for hours: thousands of rows wait for their next attempt. A
    # claim (made in every join's commit) must not walk them all.
    later = time.time() + 3600
    backlog = [
        outbox.NewRow(
            kind="conversion", path="/c", body={}, idempotency_key=f"b{i}", priority=i % 2
        )
        for i in range(5000)
    ]
    await db.write(lambda conn: outbox.enqueue_many(conn, backlog))
    await db.write(lambda conn: conn.execute("UPDATE outbox SET next_attempt_at = ?", (later,)))
    due = [outbox.NewRow(kind="visit", path="/v", body={}, idempotency_key="v", priority=1)]
    await db.write(lambda conn: outbox.enqueue_many(conn, due))

    hundreds = [0]  # SQLite calls this every 100 VM instructions

    def count() -> int:
        hundreds[0] += 1
        return 0

    await db.write(lambda conn: conn.set_progress_handler(count, 100))
    try:
        hundreds[0] = 0
        claimed = await outbox.claim(db, limit=4, lease=30)
        claim_cost = hundreds[0]
        hundreds[0] = 0
        next_due = await outbox.next_due_at(db)
        next_due_cost = hundreds[0]
    finally:
        await db.write(lambda conn: conn.set_progress_handler(None, 0))
    assert [r.idempotency_key for r in claimed] == ["v"]
    assert next_due == pytest.approx(later)
    # Walking the backlog takes ~10 instructions a row: 500 hundreds and more.
    assert claim_cost < 20
    assert next_due_cost < 20


async def test_an_outbox_row_of_an_unknown_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="priority"):
        outbox.NewRow(kind="conversion", path="/c", body={}, idempotency_key="x", priority=2)


async def test_repeat_visit_keeps_old_values_where_new_are_empty(db: Database) -> None:
    async with db.transaction() as conn:
        first = await visits.upsert(
            conn, visits.Attribution(temp_id="t", fbc="fb.1.1.a", client_ip="1.1.1.1")
        )
        second = await visits.upsert(
            conn, visits.Attribution(temp_id="t", fbc="", fbp="fb.1.2.b", client_ip="2.2.2.2")
        )
        visit = await visits.get_by_id(conn, first)
    assert first == second
    assert visit is not None
    assert (visit.fbc, visit.fbp, visit.client_ip) == ("fb.1.1.a", "fb.1.2.b", "2.2.2.2")


async def test_inbox_batches_failures_and_redelivery(db: Database) -> None:
    batch = [(1, "chat_member", '{"update_id": 1}'), (2, "message", '{"update_id": 2}')]
    assert await inbox.store_batch(db, batch) == set()
    await inbox.mark_done(db, [1])
    await inbox.mark_failed(db, 2, error="boom", retry_at=time.time() + 100)
    assert await inbox.failed_count(db) == 1
    now = time.time()
    assert await inbox.due_for_retry(db, now=now, new_before=0) == []
    due = await inbox.due_for_retry(db, now=now + 200, new_before=0)
    assert [(u.update_id, u.attempts) for u in due] == [(2, 1)]
    # A `new` update is only picked up once it is older than `new_before`: until
    # then the handling pass that stored it still owns it.
    await inbox.store_batch(db, [(3, "message", '{"update_id": 3}')])
    assert [u.update_id for u in await inbox.due_for_retry(db, now=now, new_before=now)] == []
    later = await inbox.due_for_retry(db, now=now, new_before=time.time() + 1)
    assert [u.update_id for u in later] == [3]
    # The same batch again: update 1 is known as done; with a new one beside it, too.
    assert await inbox.store_batch(db, batch) == {1}
    assert await inbox.store_batch(db, [batch[0], (4, "message", '{"update_id": 4}')]) == {1}
    assert await inbox.prune_old(db, now=time.time() + inbox.DONE_KEPT_SECONDS + 1) == 1


async def test_conversions_are_claimed_before_visit_forwards(db: Database) -> None:
    async with db.transaction() as conn:
        for i in range(3):
            await outbox.enqueue(
                conn,
                outbox.NewRow(
                    kind="visit", path="/v", body={}, idempotency_key=f"v{i}", priority=1
                ),
            )
        await outbox.enqueue(
            conn, outbox.NewRow(kind="conversion", path="/c", body={}, idempotency_key="c")
        )
    claimed = await outbox.claim(db, limit=2, lease=30)
    # The conversion queued last still goes first; then the oldest visit.
    assert {r.idempotency_key for r in claimed} == {"c", "v0"}


async def test_write_runs_the_work_in_one_transaction_and_rolls_back_on_error(
    db: Database,
) -> None:
    """`Database.write` reaches into aiosqlite's `_execute` and `_conn` (pinned in
    pyproject): this is the test that fails first if a release changes them."""

    def add(conn: sqlite3.Connection) -> int:
        assert conn.in_transaction
        conn.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (1, 'x', '{}', 0)"
        )
        return int(conn.execute("SELECT count(*) FROM updates").fetchone()[0])

    assert await db.write(add) == 1

    def add_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (2, 'x', '{}', 0)"
        )
        raise RuntimeError("half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        await db.write(add_then_fail)
    rows = await db.fetchall("SELECT update_id FROM updates")
    assert [r[0] for r in rows] == [1]
    # The connection is usable and out of any transaction afterwards.
    assert await db.write(lambda conn: conn.in_transaction) is True
    async with db.reader() as conn:
        assert not conn.in_transaction


async def test_an_inline_write_runs_on_the_loop_thread_one_at_a_time(db: Database) -> None:
    """`write(inline=True)` skips the hop to aiosqlite's thread, and still never
    runs beside a write or a read that holds the connection there."""
    loop_thread = threading.get_ident()
    threads: list[tuple[str, int]] = []

    def add(update_id: int, tag: str) -> Callable[[sqlite3.Connection], int]:
        def work(conn: sqlite3.Connection) -> int:
            assert conn.in_transaction
            threads.append((tag, threading.get_ident()))
            conn.execute(
                "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (?, 'x', '{}', 0)",
                (update_id,),
            )
            if tag == "hop":  # long enough for an unserialised inline write to land in it
                time.sleep(0.02)
            return int(conn.execute("SELECT count(*) FROM updates").fetchone()[0])

        return work

    hop, inline = await asyncio.gather(
        db.write(add(1, "hop")), db.write(add(2, "inline"), inline=True)
    )
    assert (hop, inline) == (1, 2)
    (first, first_thread), second = threads
    assert first == "hop"
    assert first_thread != loop_thread
    assert second == ("inline", loop_thread)

    def fail(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (3, 'x', '{}', 0)"
        )
        raise RuntimeError("half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        await db.write(fail, inline=True)
    rows = await db.fetchall("SELECT update_id FROM updates ORDER BY update_id")
    assert [r[0] for r in rows] == [1, 2]
    async with db.reader() as conn:
        assert not conn.in_transaction


async def test_an_inline_write_waits_for_another_process_off_the_loop(db: Database) -> None:
    """A CLI command or a backup holding the write lock must not freeze the event
    loop for the busy timeout: the inline write goes to the writer's thread."""
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ran_on: list[int] = []

    def add(conn: sqlite3.Connection) -> None:
        ran_on.append(threading.get_ident())
        conn.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (7, 'x', '{}', 0)"
        )

    try:
        write = asyncio.create_task(db.write(add, inline=True))
        await asyncio.sleep(0.05)
        # Blocked in the loop, the write would have used up its busy timeout and
        # failed by now; it is still waiting, and the loop ran this line.
        assert not write.done()
        other.execute("COMMIT")
        await write
    finally:
        other.close()
    assert ran_on != [threading.get_ident()]
    assert len(ran_on) == 1
    rows = await db.fetchall("SELECT update_id FROM updates")
    assert [r[0] for r in rows] == [7]
    # The busy timeout is back for everything after.
    async with db.reader() as conn:
        assert [tuple(r) for r in await conn.execute_fetchall("PRAGMA busy_timeout")] == [(5000,)]


async def test_a_failed_commit_leaves_the_connection_usable(db: Database) -> None:
    # A deferred foreign key fails at COMMIT, not at the INSERT: the commit path.
    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute(
            "INSERT INTO invite_links (url, chat_id, kind, name, created_at)"
            " VALUES ('https://t.me/+orphan', -42, 'visitor', 'x', 0)"
        )

    with pytest.raises(sqlite3.IntegrityError):
        await db.write(orphan)
    assert (
        await db.write(lambda conn: conn.execute("SELECT count(*) FROM invite_links").fetchone()[0])
        == 0
    )


async def test_open_creates_missing_folders(tmp_path: Path) -> None:
    database = await open_database(tmp_path / "nested" / "bridge.db")
    try:
        assert (tmp_path / "nested" / "bridge.db").is_file()
    finally:
        await database.close()
