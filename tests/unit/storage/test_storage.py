"""SQLite storage: migrations, the outbox's state machine, join natural keys, the inbox."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from pathlib import Path

import aiosqlite
import psycopg
import pytest

from storage import channels, inbox, invite_links, joins, outbox, visits
from storage.db import (
    Database,
    Transaction,
    latest_version,
    migrate,
    open_database,
    open_database_url,
    schema_version,
)
from storage.postgres import WRITE_LOCK
from storage.sqlite import SqliteDatabase
from tests.harness import ROOT, write


async def test_migrations_recorded_and_idempotent(engine_db: Database) -> None:
    version = await schema_version(engine_db)
    assert version == latest_version()
    assert await migrate(engine_db) == version


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(db: Database) -> None:
    pragmas = await db.fetchall("PRAGMA journal_mode")
    assert pragmas[0][0] == "wal"
    assert (await db.fetchall("PRAGMA foreign_keys"))[0][0] == 1


async def _queue(db: Database, key: str) -> int:
    async with db.transaction() as tx:
        row_id = await outbox.enqueue(
            tx,
            outbox.NewRow(
                kind="conversion", path="/events/conversion", body={"a": 1}, idempotency_key=key
            ),
        )
    assert row_id is not None
    return row_id


async def test_claim_counts_attempt_and_leases(engine_db: Database) -> None:
    first = await _queue(engine_db, "k1")
    await _queue(engine_db, "k2")
    claimed = await outbox.claim(engine_db, limit=1, lease=30)
    assert [r.id for r in claimed] == [first]
    assert claimed[0].attempts == 1
    assert claimed[0].first_attempt_at is not None
    # A claimed row is not handed out twice.
    again = await outbox.claim(engine_db, limit=5, lease=30)
    assert [r.id for r in again] == [first + 1]
    assert await outbox.claim(engine_db, limit=5, lease=30) == []


async def test_reschedule_keeps_errors_list(engine_db: Database) -> None:
    row_id = await _queue(engine_db, "k")
    for attempt in range(1, 25):
        (row,) = await outbox.claim(engine_db, limit=1, lease=30, now=time.time() + 10 * attempt)
        await outbox.reschedule(
            engine_db, row.id, attempt=row.attempts, next_attempt_at=0, error=f"HTTP 503 #{attempt}"
        )
    stored = await outbox.get(engine_db, row_id)
    assert stored is not None
    errors = json.loads(stored["errors"])
    assert len(errors) == outbox.MAX_ERRORS_KEPT
    assert errors[-1]["error"] == "HTTP 503 #24"
    assert errors[-1]["attempt"] == 24
    assert stored["state"] == "pending"
    assert stored["attempts"] == 24


async def test_park_and_retry(engine_db: Database) -> None:
    row_id = await _queue(engine_db, "k")
    (row,) = await outbox.claim(engine_db, limit=1, lease=30)
    await outbox.park(engine_db, row.id, attempt=1, reason="HTTP 400 INVALID_PAYLOAD: x")
    counts = await outbox.counts(engine_db)
    assert (counts.parked, counts.pending) == (1, 0)
    assert await outbox.claim(engine_db, limit=5, lease=30) == []
    assert await outbox.retry_parked(engine_db, row_id) == 1
    assert [r.id for r in await outbox.claim(engine_db, limit=5, lease=30)] == [row_id]


async def test_rescue_after_crash_and_expired_lease(engine_db: Database) -> None:
    a = await _queue(engine_db, "a")
    await outbox.claim(engine_db, limit=1, lease=1000)
    assert await outbox.rescue_claimed(engine_db, expired_only=True) == 0
    assert await outbox.rescue_claimed(engine_db, expired_only=False) == 1
    (row,) = await outbox.claim(engine_db, limit=1, lease=-1.0)  # a lease already over
    assert row.id == a
    assert row.attempts == 2
    assert await outbox.rescue_claimed(engine_db, expired_only=True) == 1


async def test_hand_back_does_not_count_the_attempt(engine_db: Database) -> None:
    row_id = await _queue(engine_db, "a")
    await outbox.claim(engine_db, limit=1, lease=30)
    await outbox.hand_back(engine_db, [row_id])
    (row,) = await outbox.claim(engine_db, limit=1, lease=30)
    assert row.attempts == 1


async def test_idempotency_key_unique(engine_db: Database) -> None:
    await _queue(engine_db, "same")
    async with engine_db.transaction() as tx:
        again = await outbox.enqueue(
            tx, outbox.NewRow(kind="conversion", path="/x", body={}, idempotency_key="same")
        )
    assert again is None
    assert (await outbox.counts(engine_db)).pending == 1


async def test_join_natural_keys(engine_db: Database) -> None:
    await _add_channel(engine_db)
    async with engine_db.transaction() as tx:
        visit_id = await visits.upsert(tx, visits.Attribution(temp_id="t1", fbc="fb.1.1.x"))
        link = await invite_links.insert(
            tx,
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

    first = await write(
        engine_db, lambda tx: joins.insert_many(tx, [join("attributed", link.id, 10)])
    )
    # Same chat, user and link: the same join, whatever the date says; and a
    # duplicate inside one batch is new only once.
    later = [join("attributed", link.id, 11), join("organic", None, 20), join("organic", None, 20)]
    second = await write(engine_db, lambda tx: joins.insert_many(tx, later))
    leave = joins.NewLeave(chat_id=-1001, user_id=7, left_at=30, update_id=2)
    await write(engine_db, lambda tx: joins.record_leaves(tx, [leave, leave]))
    assert list(first) == [0]
    assert list(second) == [1]
    assert (await engine_db.fetchall("SELECT count(*) FROM leaves"))[0][0] == 1
    rows = await engine_db.fetchall("SELECT left_at FROM joins ORDER BY id")
    assert [r[0] for r in rows] == [30, 30]


async def _add_channel(db: Database, chat_id: int = -1001) -> None:
    await write(
        db,
        lambda tx: channels.upsert_in(
            tx,
            chat_id,
            title="T",
            username=None,
            chat_type="channel",
            active=True,
            can_invite_users=True,
        ),
    )


async def test_a_batch_of_new_joins_gets_each_its_own_id(engine_db: Database) -> None:
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
    await _add_channel(engine_db)
    await write(engine_db, lambda tx: joins.insert_many(tx, rows[:1]))
    second = await write(engine_db, lambda tx: joins.insert_many(tx, rows[1:]))
    stored = {r[0]: r[1] for r in await engine_db.fetchall("SELECT id, user_id FROM joins")}
    assert {index: stored[join_id] for index, join_id in second.items()} == {0: 3, 1: 9}


async def test_links_are_found_with_the_visit_they_were_handed_to(engine_db: Database) -> None:
    await _add_channel(engine_db)
    async with engine_db.transaction() as tx:
        visit_id = await visits.upsert(
            tx, visits.Attribution(temp_id="t9", fbc="fb.1.1.z", user_agent="UA")
        )
        handed = await invite_links.insert(
            tx,
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
            tx,
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
    found = await write(engine_db, lambda tx: invite_links.find_with_visits(tx, urls))
    assert set(found) == set(urls[:2])
    link, visit = found["https://t.me/+handed"]
    assert link == handed
    assert visit == visits.Attribution(temp_id="t9", fbc="fb.1.1.z", user_agent="UA")
    campaign, none = found["https://t.me/+campaign"]
    assert (campaign.kind, campaign.campaign, none) == ("campaign", "spring", None)


async def test_handled_updates_stored_with_their_results_tell_which_were_stored_before(
    engine_db: Database,
) -> None:
    await inbox.store_batch(engine_db, [(1, "chat_member", '{"update_id": 1}')])
    batch = [(n, "chat_member", f'{{"update_id": {n}}}') for n in (1, 2, 3)]
    before = await write(
        engine_db, lambda tx: inbox.store_handled_in(tx, batch, failed={3}, now=time.time())
    )
    assert before == {1}
    states = await engine_db.fetchall("SELECT update_id, state FROM updates ORDER BY update_id")
    # 1 stays as the retry pass owns it; 3 failed and is recorded as such next.
    assert [tuple(r) for r in states] == [(1, "new"), (2, "done"), (3, "new")]
    again = await write(
        engine_db, lambda tx: inbox.store_handled_in(tx, batch[1:], failed=set(), now=time.time())
    )
    assert again == {2, 3}


async def test_an_outbox_body_orjson_cannot_encode_is_kept(engine_db: Database) -> None:
    row = outbox.NewRow(
        kind="conversion", path="/c", body={"userAgent": "bad \ud800 text"}, idempotency_key="s"
    )
    await write(engine_db, lambda tx: outbox.enqueue_many(tx, [row]))
    stored = (await engine_db.fetchall("SELECT body FROM outbox"))[0][0]
    assert json.loads(stored) == {"userAgent": "bad \ud800 text"}


async def test_claims_and_the_next_due_time_seek_past_a_backlog_that_is_backing_off(
    db: Database, tmp_path: Path
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
    await write(db, lambda tx: outbox.enqueue_many(tx, backlog))
    await write(db, lambda tx: tx.execute("UPDATE outbox SET next_attempt_at = ?", (later,)))
    due = [outbox.NewRow(kind="visit", path="/v", body={}, idempotency_key="v", priority=1)]
    await write(db, lambda tx: outbox.enqueue_many(tx, due))

    hundreds = [0]  # SQLite calls this every 100 VM instructions

    def count() -> int:
        hundreds[0] += 1
        return 0

    # The same queries on a connection of the test's own, which counts instructions.
    conn = await aiosqlite.connect(tmp_path / "bridge.db", isolation_level=None)
    await conn.set_progress_handler(count, 100)
    counted = SqliteDatabase(conn, tmp_path / "bridge.db", readonly=False)
    try:
        async with counted.transaction() as tx:
            hundreds[0] = 0
            claimed = await outbox.claim_in(tx, limit=4, lease=30, now=time.time())
            claim_cost = hundreds[0]
        hundreds[0] = 0
        next_due = await outbox.next_due_at(counted)
        next_due_cost = hundreds[0]
    finally:
        await counted.close()
    assert [r.idempotency_key for r in claimed] == ["v"]
    assert next_due == pytest.approx(later)
    # Walking the backlog takes ~10 instructions a row: 500 hundreds and more.
    assert claim_cost < 20
    assert next_due_cost < 20


async def test_an_outbox_row_of_an_unknown_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="priority"):
        outbox.NewRow(kind="conversion", path="/c", body={}, idempotency_key="x", priority=2)


async def test_repeat_visit_keeps_old_values_where_new_are_empty(engine_db: Database) -> None:
    async with engine_db.transaction() as tx:
        first = await visits.upsert(
            tx, visits.Attribution(temp_id="t", fbc="fb.1.1.a", client_ip="1.1.1.1")
        )
        second = await visits.upsert(
            tx, visits.Attribution(temp_id="t", fbc="", fbp="fb.1.2.b", client_ip="2.2.2.2")
        )
        visit = await visits.get_by_id(tx, first)
    assert first == second
    assert visit is not None
    assert (visit.fbc, visit.fbp, visit.client_ip) == ("fb.1.1.a", "fb.1.2.b", "2.2.2.2")


async def test_inbox_batches_failures_and_redelivery(engine_db: Database) -> None:
    batch = [(1, "chat_member", '{"update_id": 1}'), (2, "message", '{"update_id": 2}')]
    assert await inbox.store_batch(engine_db, batch) == set()
    await inbox.mark_done(engine_db, [1])
    await inbox.mark_failed(engine_db, 2, error="boom", retry_at=time.time() + 100)
    assert await inbox.failed_count(engine_db) == 1
    now = time.time()
    assert await inbox.due_for_retry(engine_db, now=now, new_before=0) == []
    due = await inbox.due_for_retry(engine_db, now=now + 200, new_before=0)
    assert [(u.update_id, u.attempts) for u in due] == [(2, 1)]
    # A `new` update is only picked up once it is older than `new_before`: until
    # then the handling pass that stored it still owns it.
    await inbox.store_batch(engine_db, [(3, "message", '{"update_id": 3}')])
    assert [
        u.update_id for u in await inbox.due_for_retry(engine_db, now=now, new_before=now)
    ] == []
    later = await inbox.due_for_retry(engine_db, now=now, new_before=time.time() + 1)
    assert [u.update_id for u in later] == [3]
    # The same batch again: update 1 is known as done; with a new one beside it, too.
    assert await inbox.store_batch(engine_db, batch) == {1}
    assert await inbox.store_batch(engine_db, [batch[0], (4, "message", '{"update_id": 4}')]) == {1}
    assert await inbox.prune_old(engine_db, now=time.time() + inbox.DONE_KEPT_SECONDS + 1) == 1


async def test_conversions_are_claimed_before_visit_forwards(engine_db: Database) -> None:
    async with engine_db.transaction() as tx:
        for i in range(3):
            await outbox.enqueue(
                tx,
                outbox.NewRow(
                    kind="visit", path="/v", body={}, idempotency_key=f"v{i}", priority=1
                ),
            )
        await outbox.enqueue(
            tx, outbox.NewRow(kind="conversion", path="/c", body={}, idempotency_key="c")
        )
    claimed = await outbox.claim(engine_db, limit=2, lease=30)
    # The conversion queued last still goes first; then the oldest visit.
    assert {r.idempotency_key for r in claimed} == {"c", "v0"}


async def test_a_transaction_commits_as_one_or_rolls_back(engine_db: Database) -> None:
    async with engine_db.transaction() as tx:
        await tx.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (1, 'x', '{}', 0)"
        )
        assert await _updates(tx) == 1

    async def add_then_fail() -> None:
        async with engine_db.transaction() as tx:
            await tx.execute(
                "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (2, 'x', '{}', 0)"
            )
            raise RuntimeError("half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        await add_then_fail()
    rows = await engine_db.fetchall("SELECT update_id FROM updates")
    assert [r[0] for r in rows] == [1]
    # The writer is usable afterwards: a new transaction begins and commits.
    assert await engine_db.execute("DELETE FROM updates") == 1


async def test_transactions_never_interleave(engine_db: Database) -> None:
    """Each task's statements run inside its own transaction, however the event
    loop switches between the tasks."""
    counts: list[tuple[int, int]] = []

    async def add(update_id: int) -> None:
        async with engine_db.transaction() as tx:
            await tx.execute(
                "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (?, 'x', '{}', 0)",
                (update_id,),
            )
            await asyncio.sleep(0.02)  # room for the other task to run
            row = await tx.fetchone("SELECT count(*) FROM updates")
            assert row is not None
            counts.append((update_id, int(row[0])))

    await asyncio.gather(add(1), add(2), engine_db.execute("UPDATE updates SET attempts = 1"))
    assert counts == [(1, 1), (2, 2)]
    # The lone statement waited its turn: it ran after both transactions, on both rows.
    rows = await engine_db.fetchall("SELECT attempts FROM updates ORDER BY update_id")
    assert [r[0] for r in rows] == [1, 1]


async def test_a_write_waits_for_another_process_off_the_loop(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    """A CLI command or a backup holding the write lock must not freeze the event
    loop: the transaction waits for it on the writer's thread."""
    other = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.create_task(
            db.execute(
                "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (7, 'x', '{}', 0)"
            )
        )
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        # The loop ran on while the write waited for the lock.
        assert ticks == 5
        assert not write.done()
        other.execute("COMMIT")
        assert await write == 1
    finally:
        other.close()
    rows = await db.fetchall("SELECT update_id FROM updates")
    assert [r[0] for r in rows] == [7]


async def test_a_postgres_write_waits_for_another_process_holding_the_write_lock(
    postgres_url: str,
) -> None:
    """BEGIN IMMEDIATE's guarantee across processes: while another session holds the
    write lock, a transaction waits for it, without freezing the event loop, and
    then sees what the other committed."""
    database = await open_database_url(postgres_url)
    other = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    try:
        await other.execute("BEGIN")
        await other.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        await other.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (7, 'x', '{}', 0)"
        )

        async def read_then_write() -> int:
            async with database.transaction() as tx:
                row = await tx.fetchone("SELECT count(*) FROM updates")
                assert row is not None
                await tx.execute(
                    "INSERT INTO updates (update_id, kind, raw, received_at)"
                    " VALUES (?, 'x', '{}', 0)",
                    (8 + int(row[0]),),
                )
                return int(row[0])

        write = asyncio.create_task(read_then_write())
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5
        assert not write.done()
        await other.execute("COMMIT")
        assert await write == 1  # it read after the other's commit
    finally:
        await other.close()
        await database.close()


async def test_a_failed_commit_leaves_the_connection_usable(db: Database) -> None:
    # A deferred foreign key fails at COMMIT, not at the INSERT: the commit path.
    async def orphan() -> None:
        async with db.transaction() as tx:
            await tx.execute("PRAGMA defer_foreign_keys = ON")
            await tx.execute(
                "INSERT INTO invite_links (url, chat_id, kind, name, created_at)"
                " VALUES ('https://t.me/+orphan', -42, 'visitor', 'x', 0)"
            )

    with pytest.raises(sqlite3.IntegrityError):
        await orphan()
    assert await db.fetchall("SELECT id FROM invite_links") == []
    async with db.transaction() as tx:
        assert await tx.execute("UPDATE invite_links SET used_at = 1") == 0


async def test_a_read_snapshot_neither_waits_for_the_writer_nor_sees_its_work(
    engine_db: Database,
) -> None:
    async with engine_db.transaction() as tx:
        await tx.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (1, 'x', '{}', 0)"
        )
        # The writer holds its transaction open: a read goes on beside it.
        async with engine_db.read() as snapshot:
            assert await _updates(snapshot) == 0
    async with engine_db.read() as snapshot:
        first = await _updates(snapshot)
        await engine_db.execute(
            "INSERT INTO updates (update_id, kind, raw, received_at) VALUES (2, 'x', '{}', 0)"
        )
        # One snapshot: the commit made meanwhile is not in it.
        assert (first, await _updates(snapshot)) == (1, 1)
        refused = (sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction)
        with pytest.raises(refused, match=r"readonly|read-only|query_only"):
            await snapshot.execute("DELETE FROM updates")
    async with engine_db.read() as snapshot:
        assert await _updates(snapshot) == 2


async def _updates(tx: Transaction) -> int:
    row = await tx.fetchone("SELECT count(*) FROM updates")
    assert row is not None
    return int(row[0])


def test_storage_uses_no_private_names_of_aiosqlite() -> None:
    """aiosqlite as published: its underscore names are not ours to build on."""
    used = []
    for path in sorted((ROOT / "storage").glob("*.py")) + sorted((ROOT / "bot").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "aiosqlite" in text:
            used += [f"{path.name}: {m}" for m in re.findall(r"\._(?:execute|conn|tx)\b\(", text)]
            used += [f"{path.name}: {m}" for m in re.findall(r"_conn\._conn", text)]
    assert used == []


async def test_open_creates_missing_folders(tmp_path: Path) -> None:
    database = await open_database(tmp_path / "nested" / "bridge.db")
    try:
        assert (tmp_path / "nested" / "bridge.db").is_file()
    finally:
        await database.close()
