"""Privacy over a real database: RETENTION_DAYS scrubbing keeps the counts and clears
only old, finished rows; forgetting removes one person's rows and nothing else."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot import cli
from bot.adtarget.events import EventType
from bot.joins.recorder import ChatRef, JoinRecorder, JoinSeen, LeaveSeen, ReportingPolicy
from bot.ops.privacy import PrivacySweeper, parse_user_id
from bot.tracker.input import VisitInput
from bot.tracker.visits import VisitRecorder
from storage import channels, inbox, invite_links, join_requests, outbox
from storage.db import Database, Transaction, open_database
from storage.outbox import OutboxRow
from storage.privacy import _SCRUB_VISITS, _scrub_outbox, forget_user
from storage.stats import channel_stats
from tests.harness import write


class _NoCourier:
    """The recorder's view of a courier that is not running: it claims nothing."""

    async def claim_in(self, tx: Transaction) -> list[OutboxRow]:
        return []

    def send_claimed(self, rows: Sequence[OutboxRow]) -> None:
        pass


DAY = 86400
CHAT = ChatRef(-1001000000001, "Channel A", None, "channel")
ALICE, BOB = 5550101, 5550102
PAGE = "https://landing.example/offer?fbclid=AbC&utm_source=meta"

VISIT = VisitInput(
    temp_id=None,
    client_session_id=None,
    external_user_id="crm-1",
    href=PAGE,
    landing_page=None,
    referrer="https://m.facebook.com/?q=secret",
    client_ip="203.0.113.7",
    user_agent="Mozilla/5.0 Test",
    country="DE",
    city=None,
    region=None,
    fbc="fb.1.1700000000000.AbC",
    fbp="fb.1.1700000000000.42",
    gclid="g-1",
    ttclid=None,
    sccid=None,
    utm_source="meta",
    utm_medium=None,
    utm_campaign="spring",
    utm_content=None,
    utm_term=None,
)
PERSONAL_VISIT_COLUMNS = (
    "external_user_id",
    "href",
    "referrer",
    "client_ip",
    "user_agent",
    "fbc",
    "fbp",
    "gclid",
)


async def _person(db: Database, user_id: int, temp_id: str, update_id: int) -> None:
    """A visit (and its forward), their personal link, an update-fbp, their join with
    its stored update and conversion, a join request, and a leave."""
    visits = VisitRecorder(db, lambda: None)
    await visits.record(replace(VISIT, temp_id=temp_id))
    await visits.update_fbp(temp_id, f"fb.1.1700000000001.{user_id}")
    await visits.aclose()
    visit_id = await _scalar(db, "SELECT id FROM visits WHERE temp_id = ?", (temp_id,))
    # Not the user id: the link is the channel's and stays after a forget.
    url = f"https://t.me/+link{temp_id[-4:]}"
    async with db.transaction() as tx:
        link = await invite_links.insert(
            tx,
            url=url,
            chat_id=CHAT.id,
            kind="visitor",
            name=f"v{visit_id}",
            visit_id=visit_id,
            campaign=None,
            creates_join_request=False,
            expire_date=int(time.time()) + DAY,
        )
    raw = {
        "update_id": update_id,
        "chat_member": {
            "chat": {"id": CHAT.id, "type": "channel", "title": CHAT.title},
            "from": {"id": user_id, "is_bot": False, "first_name": "T"},
            "date": int(time.time()),
            "old_chat_member": {"status": "left", "user": {"id": user_id}},
            "new_chat_member": {"status": "member", "user": {"id": user_id}},
            "invite_link": {"invite_link": url},
        },
    }
    await inbox.store_batch(db, [(update_id, "chat_member", json.dumps(raw))])
    await inbox.mark_done(db, [update_id])
    recorder = JoinRecorder(db, ReportingPolicy(EventType("Lead")), _NoCourier())
    now = int(time.time())
    await recorder.record([JoinSeen(CHAT, user_id, url, now - 60, update_id=update_id)])
    await recorder.record([LeaveSeen(CHAT, user_id, now, update_id=update_id + 1)])
    request = join_requests.NewRequest(CHAT.id, user_id, link.id, url, now - 90, None, "manual")
    await write(db, lambda tx: join_requests.insert_many(tx, [request]))


async def _scalar(db: Database, sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = await db.fetchone(sql, params)
    return None if row is None else row[0]


async def _seed(db: Database) -> None:
    await write(
        db,
        lambda tx: channels.upsert_in(
            tx,
            CHAT.id,
            title=CHAT.title,
            username=None,
            chat_type="channel",
            active=True,
            can_invite_users=True,
        ),
    )
    await _person(db, ALICE, "00000000-0000-4000-8000-00000000000a", 900)
    await _person(db, BOB, "00000000-0000-4000-8000-00000000000b", 910)
    # A visitor who never joined.
    visits = VisitRecorder(db, lambda: None)
    await visits.record(replace(VISIT, temp_id="00000000-0000-4000-8000-00000000000c"))
    await visits.aclose()


async def _age(db: Database, days: float) -> None:
    """Make every visit and outbox row `days` old."""
    then = time.time() - days * DAY
    async with db.transaction() as tx:
        await tx.execute("UPDATE visits SET created_at = ?, updated_at = ?", (then, then))
        await tx.execute("UPDATE outbox SET created_at = ?", (then,))


async def _stats(db: Database) -> Any:
    row = await channel_stats(db, chat_id=None, since=None, now=time.time())
    return replace(row, now=0)


async def test_sweep_clears_old_finished_rows_and_keeps_counts(engine_db: Database) -> None:
    await _seed(engine_db)
    async with engine_db.transaction() as tx:
        # Alice's conversion was delivered, Bob's is still waiting: his keeps its signals.
        await tx.execute(
            "UPDATE outbox SET state = 'delivered'"
            " WHERE telegram_user_id IS NULL OR telegram_user_id != ?",
            (BOB,),
        )
    await _age(engine_db, 91)
    fresh = VisitRecorder(engine_db, lambda: None)
    await fresh.record(replace(VISIT, temp_id="00000000-0000-4000-8000-00000000000d"))
    await fresh.aclose()
    before = await _stats(engine_db)

    swept = await PrivacySweeper(engine_db, 90, batch=2).sweep_once()

    assert swept.visits == 3  # the fresh visit is not old enough
    assert swept.outbox == 6  # 3 visit forwards, 2 update-fbp, Alice's conversion
    rows = await engine_db.fetchall("SELECT * FROM visits ORDER BY id")
    for row in rows:
        old = row["temp_id"] != "00000000-0000-4000-8000-00000000000d"
        assert (row["scrubbed_at"] is not None) == old
        for column in PERSONAL_VISIT_COLUMNS:
            assert (row[column] is None) == old, column
        assert row["utm_source"] == "meta"  # the ad, not the person: kept
        assert row["temp_id"]
    for row in await engine_db.fetchall("SELECT * FROM outbox"):
        body = json.loads(row["body"])
        if row["kind"] == "conversion" and row["telegram_user_id"] == BOB:
            assert row["state"] == "pending"
            assert row["scrubbed_at"] is None
            assert body["clientIp"] == "203.0.113.7"
            assert body["eventSourceUrl"] == PAGE
            continue
        if row["scrubbed_at"] is None:  # the fresh visit's forward
            assert body.get("tempId") == "00000000-0000-4000-8000-00000000000d"
            continue
        text = row["body"] + (row["headers"] or "")
        for value in ("203.0.113.7", "Mozilla", "AbC", "fb.1.", "g-1", "crm-1", "DE"):
            assert value not in text, (row["kind"], text)
        assert row["headers"] is None
        assert "tempId" in body or "telegramUserId" in body
    assert await _stats(engine_db) == before
    # Idempotent and cheap: nothing left to do.
    again = await PrivacySweeper(engine_db, 90).sweep_once()
    assert (again.visits, again.outbox) == (0, 0)


async def test_a_scrubbed_parked_row_is_not_retried(engine_db: Database) -> None:
    await _seed(engine_db)
    async with engine_db.transaction() as tx:
        await tx.execute("UPDATE outbox SET state = 'parked' WHERE kind = 'conversion'")
    await _age(engine_db, 91)
    await PrivacySweeper(engine_db, 90).sweep_once()
    assert await _scalar(engine_db, "SELECT count(*) FROM outbox WHERE state = 'parked'") == 2
    # Stripped of what the platform matches on: /retry leaves them parked.
    assert await outbox.retry_parked(engine_db) == 0
    assert await _scalar(engine_db, "SELECT count(*) FROM outbox WHERE state = 'parked'") == 2


async def test_a_returning_visitor_is_fresh_again(engine_db: Database) -> None:
    await _seed(engine_db)
    await _age(engine_db, 100)
    await PrivacySweeper(engine_db, 90).sweep_once()
    recorder = VisitRecorder(engine_db, lambda: None)
    await recorder.record(replace(VISIT, temp_id="00000000-0000-4000-8000-00000000000c"))
    await recorder.aclose()
    row = await engine_db.fetchone(
        "SELECT client_ip, scrubbed_at FROM visits WHERE temp_id = ?",
        ("00000000-0000-4000-8000-00000000000c",),
    )
    assert row is not None
    assert row["client_ip"] == "203.0.113.7"
    assert row["scrubbed_at"] is None
    assert (await PrivacySweeper(engine_db, 90).sweep_once()).visits == 0


async def test_young_rows_are_left_alone(engine_db: Database) -> None:
    await _seed(engine_db)
    async with engine_db.transaction() as tx:
        await tx.execute("UPDATE outbox SET state = 'delivered'")
    await _age(engine_db, 89)
    swept = await PrivacySweeper(engine_db, 90).sweep_once()
    assert (swept.visits, swept.outbox) == (0, 0)
    assert await _scalar(engine_db, "SELECT count(*) FROM visits WHERE client_ip IS NULL") == 0


async def test_sweep_reads_only_rows_not_yet_scrubbed(db: Database) -> None:
    for sql in (_SCRUB_VISITS, _scrub_outbox(db.dialect)):
        plan = " ".join(
            str(r[3]) for r in await db.fetchall(f"EXPLAIN QUERY PLAN {sql}", (0, 0, 10))
        )
        assert "visits_to_scrub" in plan or "outbox_to_scrub" in plan, plan
        assert "SCAN visits" not in plan
        assert "SCAN outbox" not in plan


def _names(row: tuple[Any, ...], user_id: int) -> bool:
    """The row holds the id: as a cell, or inside text such as raw JSON or an outbox
    body (floats are left out: a timestamp's digits could match by chance)."""
    text = str(user_id)
    return user_id in row or any(
        text in (cell.decode(errors="replace") if isinstance(cell, bytes) else cell)
        for cell in row
        if isinstance(cell, str | bytes)
    )


async def _snapshot(db: Database) -> dict[str, set[tuple[Any, ...]]]:
    tables = [str(r[0]) for r in await db.fetchall(db.dialect.tables)]
    # Table names come from the engine's catalog, not from input.
    sql = 'SELECT * FROM "{}"'
    return {t: {tuple(r) for r in await db.fetchall(sql.format(t))} for t in tables}


async def test_forget_removes_that_person_and_nothing_of_another(engine_db: Database) -> None:
    await _seed(engine_db)
    before = await _snapshot(engine_db)
    alice_visit = await _scalar(
        engine_db,
        "SELECT id FROM visits WHERE temp_id = ?",
        ("00000000-0000-4000-8000-00000000000a",),
    )

    forgotten = await forget_user(engine_db, ALICE)

    after = await _snapshot(engine_db)
    gone = {t: before[t] - after[t] for t in before}
    # Counts said are the rows that went.
    for table, count in forgotten.deleted.items():
        assert len(gone[table]) == count, table
    assert forgotten.deleted["joins"] == 1
    assert forgotten.deleted["leaves"] == 1
    assert forgotten.deleted["join_requests"] == 1
    assert forgotten.deleted["visits"] == 1
    # Her conversion, her visit's forward and its update-fbp.
    assert forgotten.deleted["outbox"] == 3
    assert forgotten.deleted["updates"] == 1
    assert forgotten.unlinked == {"invite_links": 1}
    # Nothing of Bob's (same channel, same day) nor of the visitor who never joined.
    for table, rows in gone.items():
        if table == "invite_links":
            continue
        assert not any(_names(row, BOB) for row in rows), table
        assert not any("00000000-0000-4000-8000-00000000000b" in str(row) for row in rows)
    assert await _scalar(engine_db, "SELECT count(*) FROM visits") == 2
    assert await _scalar(engine_db, "SELECT count(*) FROM joins WHERE user_id = ?", (BOB,)) == 1
    # The link stays (the channel's), without the visit, and never goes back to the pool.
    link = await engine_db.fetchone(
        "SELECT visit_id, discarded_at FROM invite_links WHERE url = ?",
        ("https://t.me/+link000a",),
    )
    assert link is not None
    assert link["visit_id"] is None
    assert link["discarded_at"] is not None
    # Nowhere is she named any more; the check would see her in raw JSON and bodies.
    for table in ("updates", "outbox"):
        assert any(_names(row, ALICE) for row in before[table] if ALICE not in row), table
    for table, rows in after.items():
        assert not any(_names(row, ALICE) for row in rows), table
    assert await _scalar(engine_db, "SELECT count(*) FROM visits WHERE id = ?", (alice_visit,)) == 0
    assert (await forget_user(engine_db, ALICE)).total == 0


async def test_forget_covers_tables_added_later(engine_db: Database) -> None:
    """A feature's own table naming the user, or pointing at their joins, is erased too."""
    await _seed(engine_db)
    async with engine_db.transaction() as tx:
        # As a later migration would make them, in the engine's DDL.
        await tx.execute(
            tx.dialect.ddl(
                "CREATE TABLE audit_notes"
                " (id INTEGER PRIMARY KEY, telegram_user_id INTEGER, note TEXT)"
            )
        )
        await tx.execute(
            tx.dialect.ddl(
                "CREATE TABLE join_marks (id INTEGER PRIMARY KEY,"
                " join_id INTEGER NOT NULL REFERENCES joins(id))"
            )
        )
        await tx.execute(
            "INSERT INTO audit_notes (telegram_user_id, note) VALUES (?, 'a'), (?, 'b')",
            (ALICE, BOB),
        )
        await tx.execute("INSERT INTO join_marks (join_id) SELECT id FROM joins")
    forgotten = await forget_user(engine_db, ALICE)
    assert forgotten.deleted["audit_notes"] == 1
    assert forgotten.deleted["join_marks"] == 1
    assert await _scalar(engine_db, "SELECT count(*) FROM join_marks") == 1


def test_user_id_must_be_a_positive_number() -> None:
    assert parse_user_id(" 42 ") == 42
    for bad in ("abc", "-5", "0", "4.2", "", "١٢"):
        with pytest.raises(ValueError, match=r"Telegram user id|range"):
            parse_user_id(bad)


def test_cli_forget_prints_the_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def seeded() -> str:
        database = await open_database(tmp_path / "bridge.db")
        await _seed(database)
        await database.close()
        return str(database.path)

    path = asyncio.run(seeded())
    assert cli.main(["forget", str(ALICE), "--database", path]) == 0
    out = capsys.readouterr().out
    assert f"forgot user {ALICE}:" in out
    assert "joins: 1 row(s) deleted" in out
    assert "outbox: 3 row(s) deleted" in out
    assert "visits: 1 row(s) deleted" in out
    assert "invite_links: 1 row(s) kept, reference to the person removed" in out
    assert cli.main(["forget", str(ALICE), "--database", path]) == 0
    assert "nothing stored about user" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["forget", "bob"], "argument telegram_user_id: 'bob' is not a Telegram user id"),
        (["forget"], "the following arguments are required: telegram_user_id"),
        (["forget", "5", "--database", "/nonexistent/x.db"], "database: /nonexistent/x.db"),
    ],
)
def test_cli_forget_usage_mistakes_exit_2(
    capsys: pytest.CaptureFixture[str], arguments: list[str], expected: str
) -> None:
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
