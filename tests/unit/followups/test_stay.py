"""The stay signal's parts: storage (sweep, due, outcomes), /stay's
argument checking, the member-status rule and the follow-up event row."""

from __future__ import annotations

import sqlite3
import time
from importlib import resources
from pathlib import Path

import pytest
from aiogram.types import (
    ChatMember,
    ChatMemberAdministrator,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberOwner,
    ChatMemberRestricted,
)

from bot.adtarget.events import EventType
from bot.followups.stay import follow_up_row, is_present
from bot.followups.stay_command import StayChange, parse_change
from bot.simulators.telegram_models import member_json
from storage import channels, joins, outbox, stay
from storage.db import Database, open_database
from tests.harness import write

CHAT = -1001
OTHER = -1002
DAY = 86400


@pytest.fixture
async def engine_db(engine_db: Database) -> Database:
    """The shared fixture's database, with both channels tracked."""
    for chat_id in (CHAT, OTHER):
        async with engine_db.transaction() as tx:
            await channels.upsert_in(
                tx,
                chat_id,
                title=f"T{chat_id}",
                username=None,
                chat_type="channel",
                active=True,
                can_invite_users=True,
            )
    return engine_db


async def add_join(
    db: Database, user_id: int, *, chat_id: int = CHAT, kind: str = "attributed", at: int = 1000
) -> int:
    row = joins.NewJoin(chat_id, user_id, kind, None, None, False, at, None)
    new = await write(db, lambda tx: joins.insert_many(tx, [row]))
    return new[0]


async def add_conversion(db: Database, join_id: int, user_id: int) -> int:
    async with db.transaction() as tx:
        row_id = await outbox.enqueue(
            tx,
            outbox.NewRow(
                kind="conversion",
                path="/events/conversion",
                body={},
                idempotency_key=f"conv-{join_id}",
                join_id=join_id,
                telegram_user_id=user_id,
            ),
        )
    assert row_id is not None
    return row_id


async def scalar(db: Database, sql: str) -> object:
    row = await db.fetchone(sql)
    return None if row is None else row[0]


async def checks(db: Database) -> list[tuple[int, int, int, str, float, str]]:
    rows = await db.fetchall(
        "SELECT join_id, user_id, days, event_type, due_at, state FROM stay_checks ORDER BY id"
    )
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


async def test_sweep_schedules_attributed_joins_after_the_setting_only(engine_db: Database) -> None:
    before = await add_join(engine_db, 1)
    await stay.set_setting(engine_db, CHAT, 7, "Custom:Retained7d")
    attributed = await add_join(engine_db, 2, at=5000)
    await add_join(engine_db, 3, kind="organic")
    await add_join(engine_db, 4, kind="campaign")
    await add_join(engine_db, 5, chat_id=OTHER)  # the stay signal is off there
    assert await stay.sweep(engine_db) == 1
    assert await checks(engine_db) == [
        (attributed, 2, 7, "Custom:Retained7d", 5000 + 7 * DAY, "pending")
    ]
    assert before not in [c[0] for c in await checks(engine_db)]
    # The cursor moved on: sweeping again schedules nothing new.
    assert await stay.sweep(engine_db) == 0
    assert len(await checks(engine_db)) == 1


async def test_sweep_walks_large_gaps_in_batches(engine_db: Database) -> None:
    await stay.set_setting(engine_db, CHAT, 1, "Lead")
    for user in range(10, 35):
        await add_join(engine_db, user)
    assert await stay.sweep(engine_db, batch=4) == 25
    assert len(await checks(engine_db)) == 25


async def test_a_new_setting_applies_to_later_joins_only(engine_db: Database) -> None:
    await stay.set_setting(engine_db, CHAT, 7, "Lead")
    first = await add_join(engine_db, 1)
    await stay.sweep(engine_db)
    await stay.set_setting(engine_db, CHAT, 30, "Subscribe")
    second = await add_join(engine_db, 2)
    await stay.sweep(engine_db)
    await stay.set_setting(engine_db, CHAT, None, None)
    await add_join(engine_db, 3)
    await stay.sweep(engine_db)
    assert [(c[0], c[2], c[3]) for c in await checks(engine_db)] == [
        (first, 7, "Lead"),
        (second, 30, "Subscribe"),
    ]
    settings = await stay.settings(engine_db, [CHAT, OTHER])
    assert settings[CHAT].days is None
    assert settings[OTHER].days is None


async def test_a_change_before_the_sweep_keeps_the_old_setting_for_earlier_joins(
    engine_db: Database,
) -> None:
    await stay.set_setting(engine_db, CHAT, 7, "Lead")
    first = await add_join(engine_db, 1, at=1000)
    await stay.set_setting(engine_db, CHAT, 30, "Subscribe")  # before any sweep saw `first`
    second = await add_join(engine_db, 2, at=2000)
    third = await add_join(engine_db, 3, at=3000)
    await stay.set_setting(engine_db, CHAT, None, None)
    await add_join(engine_db, 4, at=4000)
    await stay.sweep(engine_db)
    assert [(c[0], c[2], c[3], c[4]) for c in await checks(engine_db)] == [
        (first, 7, "Lead", 1000 + 7 * DAY),
        (second, 30, "Subscribe", 2000 + 30 * DAY),
        (third, 30, "Subscribe", 3000 + 30 * DAY),
    ]
    assert await stay.sweep(engine_db) == 0


async def test_forgetting_the_newest_join_does_not_hide_the_next_one(engine_db: Database) -> None:
    await stay.set_setting(engine_db, CHAT, 7, "Lead")
    newest = await add_join(engine_db, 1)
    await stay.sweep(engine_db)
    async with engine_db.transaction() as tx:  # what erasing a person does
        await tx.execute("DELETE FROM stay_checks WHERE join_id = ?", (newest,))
        await tx.execute("DELETE FROM joins WHERE id = ?", (newest,))
    reused = await add_join(engine_db, 2)
    # SQLite hands the freed id out again (migration 014's trigger moves the cursor
    # back for it); PostgreSQL's identity never does.
    assert (reused == newest) == (engine_db.dialect.name == "sqlite")
    assert await stay.sweep(engine_db) == 1
    assert [c[1] for c in await checks(engine_db)] == [2]


async def test_due_waits_for_the_conversion_to_be_delivered(engine_db: Database) -> None:
    await stay.set_setting(engine_db, CHAT, 1, "Lead")
    join_id = await add_join(engine_db, 1, at=1000)
    conversion = await add_conversion(engine_db, join_id, 1)
    await stay.sweep(engine_db)
    assert await stay.due(engine_db, now=1000 + DAY - 1) == []
    assert await stay.due(engine_db, now=1000 + DAY) == []  # conversion still pending
    assert await stay.next_due_at(engine_db) == 1000 + DAY
    await outbox.mark_delivered(
        engine_db, conversion, conversion_id="c1", dispatched=True, warning=None, replayed=False
    )
    (check,) = await stay.due(engine_db, now=1000 + DAY)
    assert (check.join_id, check.user_id, check.days, check.report_id) == (
        join_id,
        1,
        1,
        str(CHAT),
    )


async def test_a_check_whose_conversion_is_parked_is_closed_as_failed(engine_db: Database) -> None:
    await stay.set_setting(engine_db, CHAT, 1, "Lead")
    parked_join = await add_join(engine_db, 1, at=1000)
    parked = await add_conversion(engine_db, parked_join, 1)
    waiting = await add_conversion(engine_db, await add_join(engine_db, 2, at=1000), 2)
    await stay.sweep(engine_db)
    await outbox.park(engine_db, parked, attempt=1, reason="HTTP 400 INVALID_PAYLOAD")
    assert await stay.close_parked(engine_db, now=1000 + DAY - 1) == 0, "not due yet"
    assert await stay.close_parked(engine_db, now=1000 + DAY) == 1
    assert await stay.counts(engine_db, [CHAT]) == {CHAT: {"failed": 1, "pending": 1}}
    found = await engine_db.fetchone(
        "SELECT detail FROM stay_checks WHERE join_id = ?", (parked_join,)
    )
    assert found is not None
    assert found[0] == f"conversion parked (outbox row #{parked})"
    # Only the check still waiting on a conversion in flight keeps the checker looking.
    await outbox.mark_delivered(
        engine_db, waiting, conversion_id="c2", dispatched=True, warning=None, replayed=False
    )
    assert [c.user_id for c in await stay.due(engine_db, now=1000 + DAY)] == [2]
    assert await stay.close_parked(engine_db, now=1000 + DAY) == 0


async def _one_due(db: Database, user_id: int = 1) -> stay.DueCheck:
    await stay.set_setting(db, CHAT, 7, "Custom:Retained7d")
    await add_join(db, user_id, at=1000)
    await stay.sweep(db)
    (check,) = await stay.due(db, now=time.time())
    return check


async def test_stayed_queues_one_event_and_closes_the_check(engine_db: Database) -> None:
    check = await _one_due(engine_db)
    row = follow_up_row(check, EventType.parse(check.event_type), now=2000.5)
    row_id = await stay.record_stayed(engine_db, check.id, status="member", event=row)
    assert row_id is not None
    # Asked again (a stale copy of the check): nothing new is queued.
    assert await stay.record_stayed(engine_db, check.id, status="member", event=row) is None
    stored = await outbox.get(engine_db, row_id)
    assert stored is not None
    assert (stored["kind"], stored["path"], stored["priority"]) == (
        "lead_event",
        "/leads/1/events",
        1,
    )
    assert (await outbox.counts(engine_db)).pending == 1
    assert await stay.due(engine_db, now=time.time()) == []
    assert await stay.counts(engine_db, [CHAT]) == {CHAT: {"sent": 1}}
    found = await engine_db.fetchone("SELECT state, status, outbox_id FROM stay_checks")
    assert found is not None
    assert tuple(found) == ("sent", "member", row_id)


async def test_left_without_an_update_is_recorded_on_the_join(engine_db: Database) -> None:
    check = await _one_due(engine_db)
    await stay.record_left(engine_db, check.id, status="left", now=5000.0)
    assert await scalar(engine_db, "SELECT left_at FROM joins") == 5000
    assert await scalar(engine_db, "SELECT count(*) FROM leaves") == 1
    assert await stay.counts(engine_db, [CHAT]) == {CHAT: {"left": 1}}


async def test_a_known_leave_is_not_recorded_twice(engine_db: Database) -> None:
    check = await _one_due(engine_db)
    leave = joins.NewLeave(CHAT, 1, 3000, 77)
    await write(engine_db, lambda tx: joins.record_leaves(tx, [leave]))
    await stay.record_left(engine_db, check.id, status="kicked", now=5000.0)
    assert await scalar(engine_db, "SELECT left_at FROM joins") == 3000
    assert await scalar(engine_db, "SELECT count(*) FROM leaves") == 1


async def test_a_late_real_leave_replaces_the_one_a_check_made_up(engine_db: Database) -> None:
    check = await _one_due(engine_db)  # joined at 1000
    await stay.record_left(engine_db, check.id, status="left", now=5000.0)
    leave = joins.NewLeave(CHAT, 1, 3000, 77)  # Telegram's update, late, with its own date
    await write(engine_db, lambda tx: joins.record_leaves(tx, [leave]))
    left = await engine_db.fetchall("SELECT left_at, update_id FROM leaves")
    assert [tuple(r) for r in left] == [(3000, 77)]
    assert await scalar(engine_db, "SELECT left_at FROM joins") == 3000
    # A repeat of the update changes nothing.
    leave = joins.NewLeave(CHAT, 1, 3000, 77)
    await write(engine_db, lambda tx: joins.record_leaves(tx, [leave]))
    assert await scalar(engine_db, "SELECT count(*) FROM leaves") == 1


async def test_a_real_leave_of_an_earlier_stay_keeps_a_later_made_up_one(
    engine_db: Database,
) -> None:
    await stay.set_setting(engine_db, CHAT, 7, "Lead")
    await add_join(engine_db, 1, at=1000)
    await add_join(engine_db, 1, at=4000)  # left (no update yet) and came back
    await stay.sweep(engine_db)
    later = (await stay.due(engine_db, now=time.time()))[-1]
    await stay.record_left(engine_db, later.id, status="left", now=9000.0)
    leave = joins.NewLeave(CHAT, 1, 3000, 78)  # the first stay's leave, late
    await write(engine_db, lambda tx: joins.record_leaves(tx, [leave]))
    left = await engine_db.fetchall("SELECT left_at, update_id FROM leaves ORDER BY left_at")
    assert [tuple(r) for r in left] == [(3000, 78), (9000, None)]
    assert await scalar(engine_db, "SELECT left_at FROM joins WHERE joined_at = 4000") == 9000


async def test_failures_final_or_retried(engine_db: Database) -> None:
    check = await _one_due(engine_db)
    later = time.time() + 100
    await stay.retry_later(engine_db, check.id, at=later, error="HTTP 502")
    assert await stay.due(engine_db, now=time.time()) == []
    (again,) = await stay.due(engine_db, now=later)
    assert again.attempts == 1
    await stay.record_failed(engine_db, check.id, reason="Bad Request: chat not found")
    assert await stay.due(engine_db, now=later) == []
    assert await stay.next_due_at(engine_db) is None
    found = await engine_db.fetchone("SELECT state, detail FROM stay_checks")
    assert found is not None
    assert tuple(found) == ("failed", "Bad Request: chat not found")


def test_follow_up_row_body_and_stable_key() -> None:
    check = stay.DueCheck(
        id=1,
        join_id=42,
        chat_id=CHAT,
        user_id=777,
        days=7,
        event_type="Custom:Retained7d",
        attempts=0,
        report_id="ch_abc",
    )
    event = EventType.parse(check.event_type)
    row = follow_up_row(check, event, now=1700000000.25)
    assert row.body == {
        "channelId": "ch_abc",
        "eventType": "Custom",
        "customEventName": "Retained7d",
        "eventTime": 1700000000250,
    }
    assert row.idempotency_key == f"jb-stay-{CHAT}-777-42-7d"
    # The key does not depend on when the check ran.
    assert follow_up_row(check, event, now=1.0).idempotency_key == row.idempotency_key


USER = {"id": 5, "is_bot": False, "first_name": "T"}


def wire(model: type[ChatMember], status: str, *, is_member: bool = True) -> ChatMember:
    """A member as the Bot API sends it, parsed by aiogram's own model."""
    return model.model_validate(member_json(status, USER, is_member=is_member))


@pytest.mark.parametrize(
    ("member", "present"),
    [
        (wire(ChatMemberOwner, "creator"), True),
        (wire(ChatMemberAdministrator, "administrator"), True),
        (wire(ChatMemberMember, "member"), True),
        (wire(ChatMemberRestricted, "restricted", is_member=True), True),
        (wire(ChatMemberRestricted, "restricted", is_member=False), False),
        (wire(ChatMemberLeft, "left"), False),
        (wire(ChatMemberBanned, "kicked"), False),
    ],
)
def test_who_counts_as_still_there(member: ChatMember, present: bool) -> None:
    assert is_present(member) is present


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["@chan", "7", "Custom:Retained7d"],
            StayChange("@chan", 7, EventType.parse("Custom:Retained7d")),
        ),
        (["Test", "Channel", "30", "Lead"], StayChange("Test Channel", 30, EventType("Lead"))),
        (
            ["Crypto", "2024", "7", "Custom:Stayed", "a", "week"],
            StayChange("Crypto 2024", 7, EventType("Custom", "Stayed a week")),
        ),
        (["Test", "Channel", "off"], StayChange("Test Channel", None, None)),
        (["Test", "OFF"], StayChange("Test", None, None)),
    ],
)
def test_parse_change_accepts(args: list[str], expected: StayChange) -> None:
    assert parse_change(args) == expected


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["off"], "Name the channel"),
        (["Test"], "Give the channel, the number of days and the event"),
        (["7", "Lead"], "Give the channel, the number of days and the event"),
        (["Test", "Custom:X"], "Give the channel, the number of days and the event"),
        (["Test", "week", "Lead"], "whole number from 1 to 365, not “week”"),
        (["Test", "0", "Lead"], "not “0”"),
        (["Test", "366", "Lead"], "not “366”"),
        (["Test", "-3", "Lead"], "not “-3”"),
        (["Test", "²", "Lead"], "not “²”"),
        (["Test", "①", "Lead"], "not “①”"),
        (["Test", "٣", "Lead"], "not “٣”"),
        (["Test", "9" * 5000, "Lead"], "whole number from 1 to 365"),
        (["Test", "7", "Visit"], "unknown event type"),
        (["Test", "7", "Custom:"], "custom event name"),
        (["Test", "7", "Purchase"], "cannot be Purchase"),
        (["Test", "7", "<b>"], "&lt;b&gt;"),
    ],
)
def test_parse_change_refuses_with_the_reason(args: list[str], says: str) -> None:
    answer = parse_change(args)
    assert isinstance(answer, str)
    assert says in answer


async def test_migration_014_renames_the_signal_and_keeps_its_rows(tmp_path: Path) -> None:
    """A database made before the stay signal had its name (migrations up to 013)
    keeps its setting, its checks and the sweep's cursor under the new names."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    scripts = sorted(
        (f.name, f.read_text(encoding="utf-8"))
        for f in resources.files("storage.migrations").iterdir()
        if f.name.endswith(".sql") and int(f.name[:3]) <= 13
    )
    for name, sql in scripts:
        old.executescript(sql)
        old.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (int(name[:3]), name))
    old.execute("INSERT INTO channels (chat_id, created_at, updated_at) VALUES (?, 0, 0)", (CHAT,))
    old.execute(
        "UPDATE channels SET retention_signal_days = 7, retention_signal_event = 'Lead',"
        " retention_signal_after = 0"
    )
    old.execute(
        "INSERT INTO joins (chat_id, user_id, kind, joined_at, created_at)"
        " VALUES (?, 1, 'attributed', 1000, 0)",
        (CHAT,),
    )
    old.execute(
        "INSERT INTO retention_checks (join_id, chat_id, user_id, days, event_type, due_at,"
        " created_at) VALUES (1, ?, 1, 7, 'Lead', ?, 0)",
        (CHAT, 1000 + 7 * DAY),
    )
    old.execute("UPDATE retention_sweep SET last_join_id = 1")
    old.commit()
    old.close()

    db = await open_database(path)
    try:
        assert await stay.settings(db, [CHAT]) == {CHAT: stay.StaySetting(CHAT, 7, "Lead")}
        assert await stay.counts(db, [CHAT]) == {CHAT: {"pending": 1}}
        assert await stay.next_due_at(db) == 1000 + 7 * DAY
        assert await scalar(db, "SELECT last_join_id FROM stay_sweep") == 1
        names = {str(r[0]) for r in await db.fetchall("SELECT name FROM sqlite_master")}
        assert {"stay_checks", "stay_sweep", "stay_due", "stay_chat_state"} <= names
        assert "joins_deleted_stay_marks" in names
        assert not [n for n in names if "retention" in n]
        # The trigger made again under its new name still moves the marks back.
        await write(db, lambda tx: tx.execute("DELETE FROM stay_checks"))
        await write(db, lambda tx: tx.execute("DELETE FROM joins"))
        assert await scalar(db, "SELECT last_join_id FROM stay_sweep") == 0
    finally:
        await db.close()
