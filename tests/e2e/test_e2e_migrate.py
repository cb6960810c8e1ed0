"""`python -m bot migrate-to-postgres URL`: a SQLite database that a real bridge
filled (joins, leaves, visits, links in every state, outbox rows in every state,
a stay check, inbox rows, join requests) moves into an empty PostgreSQL
database with every row and id as it was; a second run refuses the now
non-empty target; and the bridge, started on PostgreSQL, delivers the rows that
were still to be sent, each once."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import invite_pool, join_requests, outbox, stay
from storage.db import Database, open_database, open_database_url
from storage.join_requests import NewRequest
from storage.postgres import PostgresDatabase
from tests.harness import (
    CHANNEL_ID,
    ROOT,
    RunningBridge,
    bridge_env,
    bridge_settings,
)

# moves a SQLite file to PostgreSQL: both engines by itself.
pytestmark = pytest.mark.one_engine


PASSWORD = "s3cret-Pa55"
# Rows compared exactly, column for column, between the two databases.
EXACT = {
    "outbox": "SELECT id, join_id, kind, state, idempotency_key, attempts, body FROM outbox",
    "joins": "SELECT id, chat_id, user_id, link_id, kind, joined_at FROM joins",
    "invite_links": (
        "SELECT id, chat_id, url, kind, visit_id, assigned_at, used_at, revoked_at"
        " FROM invite_links"
    ),
    "visits": "SELECT id, temp_id, fbc, client_ip, created_at FROM visits",
    "stay_checks": "SELECT id, join_id, due_at, state FROM stay_checks",
    "updates": "SELECT update_id, kind, state, raw FROM updates",
}


@dataclass
class Ran:
    status: int
    out: str
    err: str


async def migrate_to_postgres(env: dict[str, str], url: str, cwd: Path) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "migrate-to-postgres",
        url,
        cwd=cwd,  # no .env there
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    ran = Ran(process.returncode, out.decode(), err.decode())
    assert PASSWORD not in ran.out + ran.err
    return ran


def with_password(url: str) -> str:
    """The test server trusts every local login; a password shows that none is printed."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


async def fill_through_a_bridge(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    """What a bridge on SQLite records, its courier off so the conversions wait."""
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, courier_enabled=False))
    await running.start()
    try:
        await running.track_channel(telegram)
        await stay.set_setting(running.bridge.db, CHANNEL_ID, 7, "Subscribe")
        for n in range(1, 6):
            url = await running.mint(f"6f1c2d3e-0000-4000-8000-00000000000{n}", fbc=f"fb.1.1.{n}")
            telegram.join(CHANNEL_ID, 5550000 + n, url)
        telegram.join(CHANNEL_ID, 5559999)  # organic: a join with no outbox row
        last = telegram.leave(CHANNEL_ID, 5550005)
        assert last is not None
        await telegram.wait_confirmed(last)
        await running.wait_scalar("SELECT count(*) FROM outbox", 5)
        await running.wait_scalar("SELECT count(*) FROM leaves", 1)
    finally:
        assert await running.stop() == 0


async def set_states(db: Database) -> None:
    """Outbox rows in every state, a revoked pool link, join requests, a stay check."""
    ids = [int(r[0]) for r in await db.fetchall("SELECT id FROM outbox ORDER BY id")]
    # Rows 3, 4, 5 are claimed; 4 is then delivered, 5 parked, 3 left sending (a
    # process that died mid-delivery: the next start re-sends it). 1 and 2 stay pending.
    await db.execute("UPDATE outbox SET next_attempt_at = 1e18 WHERE id IN (?, ?)", ids[:2])
    claimed = await outbox.claim(db, limit=10, lease=0, now=time.time())
    assert [row.id for row in claimed] == ids[2:]
    await outbox.mark_delivered(
        db, ids[3], conversion_id="cv_4", dispatched=True, warning=None, replayed=False
    )
    await outbox.park(db, ids[4], attempt=1, reason="422 INVALID_EVENT")
    await db.execute("UPDATE outbox SET next_attempt_at = 0 WHERE id IN (?, ?)", ids[:2])
    pool = await db.fetchone(
        "SELECT id FROM invite_links WHERE visit_id IS NULL AND kind = 'visitor' ORDER BY id"
    )
    assert pool is not None
    await invite_pool.mark_revoked(db, int(pool[0]))
    async with db.transaction() as tx:
        await join_requests.insert_many(
            tx,
            [
                NewRequest(CHANNEL_ID, 6700001, None, None, 1764100100, None, "manual"),
                NewRequest(CHANNEL_ID, 6700002, None, None, 1764100200, None, "manual"),
            ],
        )
    await db.execute("UPDATE join_requests SET state = 'failed' WHERE user_id = 6700002")
    await stay.sweep(db)


async def count(db: Database, table: str) -> int:
    row = await db.fetchone(f"SELECT count(*) FROM {table}")  # noqa: S608 - the catalog's names
    assert row is not None
    return int(row[0])


async def rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(row) for row in await db.fetchall(sql))


async def test_a_database_moves_to_postgres_and_the_bridge_delivers_what_waited(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, postgres_url: str
) -> None:
    await fill_through_a_bridge(tmp_path, telegram, adtarget)
    sqlite = await open_database(tmp_path / "bridge.db")
    try:
        await set_states(sqlite)
        tables = [str(r[0]) for r in await sqlite.fetchall(sqlite.dialect.tables)]
        counts = {table: await count(sqlite, table) for table in tables}
        exact = {name: await rows(sqlite, sql) for name, sql in EXACT.items()}
        states = await rows(sqlite, "SELECT state, count(*) FROM outbox GROUP BY state")
        max_id = (await sqlite.fetchone("SELECT max(id) FROM outbox") or [0])[0]
        waiting = await rows(
            sqlite, "SELECT idempotency_key FROM outbox WHERE state IN ('pending', 'sending')"
        )
    finally:
        await sqlite.close()
    assert states == [("delivered", 1), ("parked", 1), ("pending", 2), ("sending", 1)]
    for table in ("channels", "visits", "joins", "leaves", "join_requests", "stay_checks"):
        assert counts[table] > 0, table
    assert counts["updates"] >= 7  # the joins and the leave, at least
    assert counts["invite_links"] > 5  # the visitors' and the pool's

    env = bridge_env(tmp_path, telegram, adtarget)
    url = with_password(postgres_url)
    ran = await migrate_to_postgres(env, url, tmp_path)
    assert ran.status == 0, ran.out + ran.err
    assert "one-way move" in ran.out
    assert f"{url.split(':' + PASSWORD)[0]}:***@" in ran.out
    for table in tables:
        if table != "schema_migrations":
            (line,) = [line for line in ran.out.splitlines() if line.startswith(f"{table} ")]
            assert line.split()[1:] == [f"{counts[table]:,}"] * 2, line

    postgres = await open_database_url(postgres_url)
    try:
        for table in tables:
            assert await count(postgres, table) == counts[table], table
        for name, sql in EXACT.items():
            assert await rows(postgres, sql) == exact[name], name
    finally:
        await postgres.close()

    again = await migrate_to_postgres(env, url, tmp_path)
    assert again.status == 2
    assert again.err.count("\n") == 1, again.err
    assert "not empty" in again.err

    # The bridge on PostgreSQL sends what was pending or left mid-delivery, once each.
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, database_url=url))
    await running.start()
    try:
        await running.wait_scalar(
            "SELECT count(*) FROM outbox WHERE state IN ('pending', 'sending')", 0
        )
        await asyncio.sleep(0.3)  # time for a second delivery, were there one
        keys = [(conversion["idempotencyKey"],) for conversion in adtarget.conversions]
        assert sorted(keys) == waiting
        assert await rows(
            running.bridge.db, "SELECT state, count(*) FROM outbox GROUP BY state"
        ) == [
            ("delivered", 4),
            ("parked", 1),
        ]
        # A new join's row takes an id past the copied ones (the identities were moved).
        new = await running.mint("6f1c2d3e-0000-4000-8000-000000000099")
        telegram.join(CHANNEL_ID, 5550099, new)
        await adtarget.wait_for_conversions(len(waiting) + 1)
        row = await running.bridge.db.fetchone(
            "SELECT id, state FROM outbox WHERE telegram_user_id = 5550099"
        )
        assert row is not None
        assert row[0] > max_id
        await running.wait_scalar(
            "SELECT state FROM outbox WHERE telegram_user_id = 5550099", "delivered"
        )
    finally:
        assert await running.stop() == 0


async def test_it_refuses_a_running_bridge_and_a_bad_url(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, postgres_url: str
) -> None:
    from bot.app import instance_lock

    env = bridge_env(tmp_path, telegram, adtarget)
    db = await open_database(tmp_path / "bridge.db")
    await db.close()
    with instance_lock(tmp_path / "bridge.db"):  # as a running bridge holds it
        ran = await migrate_to_postgres(env, postgres_url, tmp_path)
    assert ran.status == 2
    assert f"a bridge is running on {tmp_path / 'bridge.db'} (pid {os.getpid()})" in ran.err
    ran = await migrate_to_postgres(env, f"mysql://root:{PASSWORD}@db/x", tmp_path)
    assert ran.status == 2
    assert "url: not a PostgreSQL URL" in ran.err
    # Nothing was written: the target is still empty.
    target = await PostgresDatabase.open(postgres_url)
    try:
        async with target.read() as tx:
            assert await tx.fetchall(tx.dialect.tables) == []
    finally:
        await target.close()
