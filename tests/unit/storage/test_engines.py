"""The statements of the storage modules that no other storage test runs, on both
engines (`engine_db`): pools, join requests, leads, channels, the inbox, links,
doctor's look at the schema. Same calls, same answers."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from storage import (
    channels,
    inbox,
    inspection,
    invite_links,
    invite_pool,
    join_requests,
    joins,
    leads,
    visits,
)
from storage.db import Database, latest_version, open_database_url
from storage.postgres import PostgresDatabase
from tests.harness import write

CHAT = -1001234567890  # past 32 bits, as Telegram's channel ids are
USER = 7_000_000_001


async def _channel(db: Database, chat_id: int = CHAT) -> None:
    async with db.transaction() as tx:
        await channels.upsert_in(
            tx,
            chat_id,
            title="Chan",
            username="Chan_Name",
            chat_type="channel",
            active=True,
            can_invite_users=True,
            promoted_by=USER,
        )


async def test_channels(engine_db: Database) -> None:
    await _channel(engine_db)
    async with engine_db.transaction() as tx:  # again: promoted_by is kept
        await channels.upsert_in(
            tx,
            CHAT,
            title="Renamed",
            username="Chan_Name",
            chat_type="channel",
            active=False,
            can_invite_users=True,
        )
    await channels.set_mode(engine_db, CHAT, "request")
    await channels.set_event_type(engine_db, CHAT, "Purchase", value=9.5, currency="EUR")
    await channels.set_adtarget_id(engine_db, CHAT, "at-1", "Lead")
    by_name = await channels.resolve(engine_db, "@chan_name")
    assert by_name is not None
    assert by_name == await channels.resolve(engine_db, str(CHAT))
    assert by_name == await channels.resolve(engine_db, "at-1")
    assert (by_name.title, by_name.mode, by_name.active) == ("Renamed", "request", False)
    assert [c.chat_id for c in await channels.list_all(engine_db)] == [CHAT]


async def test_pool_links_handed_out_with_a_quota(engine_db: Database) -> None:
    await _channel(engine_db)
    now = time.time()
    for n in range(3):
        await invite_pool.add(
            engine_db,
            url=f"https://t.me/+pool{n}",
            chat_id=CHAT,
            name=f"jb-{n}",
            creates_join_request=False,
            expire_date=int(now) + 3600 + n,
        )
    assert await invite_pool.sizes(engine_db, usable_after=now) == {(CHAT, False): 3}
    async with engine_db.transaction() as tx:
        visit = await visits.upsert(tx, visits.Attribution(temp_id="t1", fbc="fb.1"))
    taken = []
    for _ in range(3):
        async with engine_db.transaction() as tx:
            taken.append(
                await invite_pool.take(
                    tx,
                    chat_id=CHAT,
                    creates_join_request=False,
                    visit_id=visit,
                    client_key="10.0.0.1",
                    quota=(2, now - 60),
                    usable_after=now,
                )
            )
    # The soonest to expire first; the third refused by the quota.
    assert [link.url if link else None for link in taken] == [
        "https://t.me/+pool0",
        "https://t.me/+pool1",
        None,
    ]
    async with engine_db.transaction() as tx:
        assert (
            await invite_pool.handed_to(tx, chat_id=CHAT, client_key="10.0.0.1", since=now - 60)
            == 2
        )
        found = await invite_pool.find_assigned(tx, visit_id=visit, chat_id=CHAT, usable_after=now)
        assert found is not None
        await invite_links.mark_used(tx, [found.id])
        assert set(await invite_links.find_by_urls(tx, [found.url])) == {found.url}
        with_visit = await invite_links.find_with_visits(tx, [found.url])
        assert with_visit[found.url][1] == visits.Attribution(temp_id="t1", fbc="fb.1")
    assert await invite_pool.forget_clients(engine_db, before=time.time() + 1) == 2
    # The channel went to join-request mode: the pool's link minted for links goes.
    await channels.set_mode(engine_db, CHAT, "request")
    assert await invite_pool.discard_stale(engine_db, usable_after=now) == 1
    revoke = await invite_pool.to_revoke(engine_db, limit=5)
    assert [url for _, _, url in revoke] == [found.url]
    await invite_pool.mark_revoked(engine_db, revoke[0][0])
    assert await invite_pool.to_revoke(engine_db, limit=5) == []


async def test_join_requests_and_leads(engine_db: Database) -> None:
    await _channel(engine_db)
    async with engine_db.transaction() as tx:
        link = await invite_links.insert(
            tx,
            url="https://t.me/+req",
            chat_id=CHAT,
            kind="campaign",
            name="spring",
            visit_id=None,
            campaign="spring",
            creates_join_request=True,
            expire_date=None,
        )
        request = join_requests.NewRequest(CHAT, USER, link.id, link.url, 1000, 5, "pending")
        await join_requests.insert_many(tx, [request, request])
        assert await join_requests.request_links(tx, [(CHAT, USER)], approved_since=0) == {
            (CHAT, USER): link.url
        }
    (due,) = await join_requests.due(engine_db, now=time.time() + 1)
    assert await join_requests.next_due_at(engine_db) is not None
    await join_requests.mark_failed(engine_db, due.id, error="busy", retry_at=time.time() + 60)
    await join_requests.mark_failed(engine_db, due.id, error="gone", retry_at=None)
    assert await join_requests.due(engine_db, now=time.time() + 120) == []
    new = joins.NewJoin(CHAT, USER, "campaign", link.id, link.url, True, 1001, 6)
    await write(engine_db, lambda tx: joins.insert_many(tx, [new]))
    async with engine_db.transaction() as tx:
        assert await joins.recent_joins(tx, [(CHAT, USER)], since=1000) == {
            (CHAT, USER): [(1001, True)]
        }
    assert await leads.channels_joined(engine_db, USER, [CHAT, -1]) == [CHAT]
    lead = await leads.bridge_lead(engine_db, USER, [CHAT])
    assert [(j.kind, j.campaign, j.via_join_request) for j in lead.joins] == [
        ("campaign", "spring", True)
    ]
    assert [c for c, _, _ in await invite_links.campaign_links(engine_db, [CHAT])] == [link]


async def test_inbox(engine_db: Database) -> None:
    batch = [(1, "chat_member", '{"update_id": 1}'), (2, "message", '{"update_id": 2}')]
    assert await inbox.store_batch(engine_db, batch) == set()
    await inbox.mark_done(engine_db, [1])
    assert await inbox.store_batch(engine_db, batch) == {1}
    assert await inbox.mark_failed(engine_db, 2, error="boom", retry_at=0) == 1
    assert await inbox.failed_count(engine_db) == 1
    assert [u.update_id for u in await inbox.due_for_retry(engine_db, now=1, new_before=0)] == [2]
    await inbox.mark_unreadable(engine_db, 2, "bad payload")
    summary = await inbox.unreadable_summary(engine_db)
    assert (summary.count, summary.latest) == (1, (2, "message", "bad payload"))
    async with engine_db.transaction() as tx:
        assert await inbox.still_stored_in(tx, [1, 2, 3]) == {1, 2}
    assert await inbox.prune_old(engine_db, now=time.time() + 10**9) == 2


async def test_doctor_reads_the_schema(engine_db: Database) -> None:
    state = await inspection.schema_state(engine_db)
    assert state.version == latest_version()
    assert state.tables >= 10
    assert await inspection.quick_check(engine_db) == ["ok"]


async def test_identities_move_past_ids_given_explicitly(postgres_url: str) -> None:
    db = await open_database_url(postgres_url)
    assert isinstance(db, PostgresDatabase)
    try:
        await db.execute(
            "INSERT INTO visits (id, temp_id, created_at, updated_at) VALUES (5, 'a', 0, 0)"
        )
        await db.advance_identities()
        async with db.transaction() as tx:
            assert await visits.upsert(tx, visits.Attribution(temp_id="b")) == 6
    finally:
        await db.close()


async def test_identities_stay_valid_over_negative_ids(postgres_url: str) -> None:
    # channels' key is Telegram's chat id, negative for channels: its sequence is
    # set to 1 rather than past the largest (a negative) id, which it refuses.
    db = await open_database_url(postgres_url)
    assert isinstance(db, PostgresDatabase)
    try:
        await db.execute(
            "INSERT INTO channels (chat_id, title, created_at, updated_at)"
            " VALUES (-1001234567890, 'c', 0, 0)"
        )
        await db.advance_identities()
    finally:
        await db.close()


async def test_a_writer_connection_the_server_dropped_is_replaced(postgres_url: str) -> None:
    db = await open_database_url(postgres_url)
    try:
        row = await db.fetchone("SELECT pg_backend_pid()")
        assert row is not None
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as other:
            # Waits (up to 5 s) until that session is gone.
            await other.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],))
        with pytest.raises(psycopg.OperationalError):
            await db.fetchone("SELECT 1")
        async with db.transaction() as tx:
            assert await tx.fetchone("SELECT 2") is not None
    finally:
        await db.close()


async def test_processes_starting_together_migrate_once(postgres_url: str) -> None:
    """Several bridges on one PostgreSQL start at once: each migration is applied by
    one of them, and all of them open."""
    opened = await asyncio.gather(*(open_database_url(postgres_url) for _ in range(3)))
    try:
        rows = await opened[0].fetchall(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version"
        )
        assert [int(r[0]) for r in rows] == list(range(1, latest_version() + 1))
        assert {int(r[1]) for r in rows} == {1}
    finally:
        for database in opened:
            await database.close()
