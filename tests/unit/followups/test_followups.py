"""Follow-ups: validated before anything is queued, their rows, keys and park reasons;
the read-only database the command line uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.adtarget.client import ApiAnswer
from bot.adtarget.models import Lead
from bot.courier.verdicts import Verdict, classify_answer
from bot.followups import rows as followups
from bot.followups.lead import LeadLookup, parse_fire, parse_value
from bot.followups.lead_view import render_lookup
from bot.followups.rows import InvalidFollowUp
from storage import outbox
from storage.db import Database, open_readonly
from storage.leads import BridgeLead


async def rows(db: Database) -> list[tuple[str, str, str, str | None, int | None]]:
    found = await db.fetchall(
        "SELECT kind, path, idempotency_key, event_type, telegram_user_id FROM outbox ORDER BY id"
    )
    return [tuple(r) for r in found]  # type: ignore[misc]


async def test_queue_event_writes_one_row_per_key(engine_db: Database) -> None:
    woken: list[bool] = []
    first = await followups.queue_event(
        engine_db,
        42,
        "Custom:Retained7d",
        idempotency_key="jb-stay-1",
        wake=lambda: woken.append(True),
    )
    again = await followups.queue_event(
        engine_db, 42, "Custom:Retained7d", idempotency_key="jb-stay-1"
    )
    assert first.row_id is not None
    assert again.row_id is None, "a deterministic key makes a repeat a no-op"
    assert woken == [True]
    assert await rows(engine_db) == [
        ("lead_event", "/leads/42/events", "jb-stay-1", "Custom:Retained7d", 42)
    ]
    (stored,) = await outbox.claim(engine_db, limit=1, lease=60)
    assert stored.body["eventType"] == "Custom"
    assert stored.body["customEventName"] == "Retained7d"
    assert isinstance(stored.body["eventTime"], int)
    assert stored.event_time_ms == stored.body["eventTime"]


async def test_without_a_key_each_action_is_new(engine_db: Database) -> None:
    one = await followups.queue_event(engine_db, 42, "Purchase", value=19.99, currency="EUR")
    two = await followups.queue_event(engine_db, 42, "Purchase", value=19.99, currency="EUR")
    assert one.idempotency_key.startswith("jb-fire-")
    assert one.idempotency_key != two.idempotency_key
    assert len(await rows(engine_db)) == 2


@pytest.mark.parametrize(
    ("event", "value", "currency", "message"),
    [
        ("Purchase", None, None, "value: a Purchase needs a value > 0"),
        ("Purchase", 0.0, "EUR", "value: a Purchase needs a value > 0"),
        ("Purchase", 5.0, "eur", "currency: must be an ISO 4217 code"),
        ("Visit", None, None, "event: unknown event type 'Visit'"),
        ("Custom:", None, None, "event: a custom event name is 1-64 letters"),
        ("Lead", 5.0, None, "currency: required with a value"),
    ],
)
async def test_invalid_events_are_refused_before_queuing(
    engine_db: Database, event: str, value: float | None, currency: str | None, message: str
) -> None:
    with pytest.raises(InvalidFollowUp) as refused:
        await followups.queue_event(engine_db, 42, event, value=value, currency=currency)
    assert str(refused.value).startswith(message)
    assert await rows(engine_db) == []


async def test_queue_value_and_its_checks(engine_db: Database) -> None:
    queued = await followups.queue_value(engine_db, 42, "cv_1", 12.5, "USD")
    assert queued.idempotency_key.startswith("jb-value-")
    assert await rows(engine_db) == [
        ("conversion_value", "/leads/42/conversions/cv_1/value", queued.idempotency_key, None, 42)
    ]
    for args, message in (
        ((42, "cv_1", 0.0, "USD"), "value: Input should be greater than 0"),
        ((42, "cv_1", 1.0, "usd"), "currency: must be an ISO 4217 code"),
        ((42, "cv/../x", 1.0, "USD"), "conversion-id: "),
        ((0, "cv_1", 1.0, "USD"), "telegram-user-id: "),
    ):
        with pytest.raises(InvalidFollowUp, match=message):
            await followups.queue_value(engine_db, *args)  # type: ignore[arg-type]
    with pytest.raises(InvalidFollowUp, match="idempotency key: 1-128"):
        await followups.queue_event(engine_db, 42, "Lead", idempotency_key="k" * 129)
    assert len(await rows(engine_db)) == 1


def test_argument_parsing() -> None:
    fire = parse_fire(["42", "Purchase", "19,99", "EUR"])
    assert (fire.user, fire.request.value, fire.request.currency) == (42, 19.99, "EUR")
    assert parse_fire(["42", "Lead"], channel_id="ch_1").request.channel_id == "ch_1"
    value = parse_value(["42", "cv_1", "5", "USD"])
    assert (value.conversion_id, value.request.value) == ("cv_1", 5.0)
    for words, message in (
        (["42"], "give a telegram-user-id and an event"),
        (["42", "Purchase", "5"], "value and currency go together"),
        (["-1", "Lead"], "telegram-user-id: '-1' is not a Telegram user id"),
        (["²", "Lead"], "telegram-user-id: '²' is not a Telegram user id"),
        ([str(2**53), "Lead"], f"telegram-user-id: {2**53} is out of the range"),
        (["42", "Purchase", "five", "EUR"], "value: a number like 19.99, not 'five'"),
    ):
        with pytest.raises(InvalidFollowUp, match=message):
            parse_fire(words)


@pytest.mark.parametrize(
    ("kind", "path", "code", "reason"),
    [
        (
            "lead_event",
            "/leads/42/events",
            "LEAD_NOT_FOUND",
            "AdTarget has no lead for user 42 (HTTP 404 LEAD_NOT_FOUND: no such lead)",
        ),
        (
            "conversion_value",
            "/leads/42/conversions/cv%2F1/value",
            "CONVERSION_NOT_FOUND",
            "AdTarget has no conversion cv/1 for user 42"
            " (HTTP 404 CONVERSION_NOT_FOUND: no such lead)",
        ),
    ],
)
async def test_follow_up_404s_park_with_a_plain_reason(
    engine_db: Database, kind: str, path: str, code: str, reason: str
) -> None:
    async with engine_db.transaction() as tx:
        await outbox.enqueue(
            tx,
            outbox.NewRow(kind=kind, path=path, body={}, idempotency_key="k", telegram_user_id=42),
        )
    (row,) = await outbox.claim(engine_db, limit=1, lease=60)
    answer = ApiAnswer(404, {"error": {"code": code, "message": "no such lead"}}, None, False)
    outcome = classify_answer(answer, row)
    assert outcome.verdict is Verdict.PARK
    assert outcome.reason == reason
    # Without the row (or for a conversion) the reason is AdTarget's own words.
    assert classify_answer(answer).reason == f"HTTP 404 {code}: no such lead"


async def test_the_read_only_database_cannot_write(db: Database, tmp_path: Path) -> None:
    await followups.queue_event(db, 42, "Lead")
    reader = await open_readonly(tmp_path / "bridge.db")
    try:
        assert (await reader.fetchone("SELECT count(*) FROM outbox"))[0] == 1  # type: ignore[index]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            async with reader.transaction() as tx:
                await tx.execute("DELETE FROM outbox")
    finally:
        await reader.close()
    with pytest.raises(FileNotFoundError):
        await open_readonly(tmp_path / "missing.db")


def test_lead_screen_escapes_a_time_adtarget_sent_as_odd_text() -> None:
    lead = Lead(telegram_user_id=7, first_seen_at="<soon>", last_seen_at=1_700_000_000)
    lookup = LeadLookup(7, lead, None, BridgeLead([], [], [], []))
    shown = render_lookup(lookup, [], html_mode=True)
    assert "first seen &lt;soon&gt;, last seen 2023-11-14 22:13 UTC" in shown
    assert "<soon>" not in shown
    assert "first seen <soon>," in render_lookup(lookup, [], html_mode=False)
