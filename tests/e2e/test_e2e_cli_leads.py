"""`python -m bot lead|fire|value` as child processes, beside a running bridge on the
same database, against the fakes: exit statuses 0/1/2 and the queued row's delivery."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage.db import open_database
from tests.harness import (
    CHANNEL_ID,
    ROOT,
    RunningBridge,
    bridge_env,
    bridge_settings,
    eventually,
)

JOINER = 6001


@dataclass
class Ran:
    status: int
    out: str
    err: str


async def bot(env: dict[str, str], cwd: Path, *args: str) -> Ran:
    """`python -m bot <args>` with only `env` (no .env: cwd is the test's folder)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def running(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> AsyncIterator[RunningBridge]:
    """The bridge, running, with JOINER's attributed join reported as a Lead."""
    bridge = RunningBridge(bridge_settings(tmp_path, telegram, adtarget))
    await bridge.start()
    await bridge.track_channel(telegram)
    url = await bridge.mint("00000000-0000-4000-8000-00000000c001", fbc="fb.1.1.cli")
    telegram.join(CHANNEL_ID, JOINER, url)
    await adtarget.wait_for_conversions(1)
    await bridge.wait_scalar("SELECT state FROM outbox", "delivered")
    yield bridge
    assert await bridge.stop() == 0


@pytest.fixture
def env(tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget) -> dict[str, str]:
    return bridge_env(tmp_path, telegram, adtarget)


async def test_lead_shows_both_sides_or_exits_1(
    running: RunningBridge, env: dict[str, str], tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    shown = await bot(env, tmp_path, "lead", str(JOINER))
    assert shown.status == 0, shown.err
    assert f"Lead on Test Channel ({CHANNEL_ID}) — capi pending" in shown.out
    assert "attributed join to Test Channel" in shown.out
    assert "conversion Lead: delivered" in shown.out
    assert shown.err == ""

    unknown = await bot(env, tmp_path, "lead", "123")
    assert unknown.status == 1
    assert unknown.err == "joinbridge lead: AdTarget has no lead for user 123\n"
    assert "nothing recorded" in unknown.out


async def test_fire_is_queued_and_reaches_adtarget_once_with_its_key(
    running: RunningBridge, env: dict[str, str], tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    ran = await bot(env, tmp_path, "fire", str(JOINER), "Purchase", "19.99", "EUR")
    assert ran.status == 0, ran.err
    match = re.search(r"queued as outbox row #(\d+)\. Idempotency-Key: (jb-fire-\S+)$", ran.out)
    assert match, ran.out
    key = match.group(2)
    # Written by another process: the running courier finds it by looking.
    await eventually(lambda: len(adtarget.events) == 1, timeout=20, what="fire delivered")
    await running.wait_scalar(
        "SELECT state FROM outbox WHERE id = ?", "delivered", (int(match.group(1)),)
    )
    (event,) = adtarget.events
    assert event["idempotencyKey"] == key
    assert (event["eventType"], event["value"], event["currency"]) == ("Purchase", 19.99, "EUR")
    assert len(adtarget.received_on(f"/api/v1/leads/{JOINER}/events")) == 1


async def test_a_repeat_with_the_same_idempotency_key_queues_nothing(
    running: RunningBridge, env: dict[str, str], tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    """A payment webhook retried: the payment id as the key, one Purchase at AdTarget."""
    args = ("fire", str(JOINER), "Purchase", "19.99", "EUR", "--idempotency-key", "pay_81:x")
    first = await bot(env, tmp_path, *args)
    assert first.status == 0, first.err
    assert "queued as outbox row #" in first.out
    assert first.out.rstrip().endswith("Idempotency-Key: pay_81:x")
    await eventually(lambda: len(adtarget.events) == 1, timeout=20, what="fire delivered")
    again = await bot(env, tmp_path, *args)
    assert again.status == 0, again.err
    assert "was already queued (key pay_81:x)" in again.out
    assert (
        await running.scalar("SELECT count(*) FROM outbox WHERE idempotency_key = 'pay_81:x'") == 1
    )
    conversion_id = adtarget.conversions[0]["conversionId"]
    value = ("value", str(JOINER), conversion_id, "5", "EUR", "--idempotency-key", "pay-82")
    assert (await bot(env, tmp_path, *value)).status == 0
    assert "already queued (key pay-82)" in (await bot(env, tmp_path, *value)).out
    await eventually(lambda: len(adtarget.values) == 1, timeout=20, what="value delivered")
    await running.wait_scalar("SELECT count(*) FROM outbox WHERE state = 'delivered'", 3)
    assert len(adtarget.received_on(f"/api/v1/leads/{JOINER}/events")) == 1
    assert [e["idempotencyKey"] for e in adtarget.events] == ["pay_81:x"]
    assert (
        len(adtarget.received_on(f"/api/v1/leads/{JOINER}/conversions/{conversion_id}/value")) == 1
    )
    for bad, reason in {"a b": "printable ASCII without spaces", "k" * 129: "got 129"}.items():
        refused = await bot(env, tmp_path, "fire", str(JOINER), "Lead", "--idempotency-key", bad)
        assert refused.status == 2
        assert "idempotency key: " in refused.err
        assert reason in refused.err, refused.err
    assert await running.scalar("SELECT count(*) FROM outbox") == 3


async def test_bad_arguments_exit_2_with_the_reason(
    running: RunningBridge, env: dict[str, str], tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    cases = {
        ("fire", str(JOINER), "Purchase"): "value: a Purchase needs a value > 0",
        ("fire", str(JOINER), "Purchase", "5", "eur"): "currency: must be an ISO 4217 code",
        ("fire", "abc", "Lead"): "telegram-user-id: 'abc' is not a Telegram user id",
        ("value", str(JOINER), "cv", "0", "EUR"): "value: Input should be greater than 0",
        ("value", str(JOINER), "cv"): "the following arguments are required: value, currency",
        ("lead",): "the following arguments are required: telegram_user_id",
    }
    for args, reason in cases.items():
        ran = await bot(env, tmp_path, *args)
        assert ran.status == 2, args
        assert reason in ran.err, (args, ran.err)
        assert "Traceback" not in ran.err
    usage = (await bot(env, tmp_path, "fire", str(JOINER), "Purchase")).err
    assert usage.count("\n") == 1, "one line"
    assert "(usage: joinbridge fire <telegram-user-id> <Lead|Purchase|" in usage
    assert await running.scalar("SELECT count(*) FROM outbox") == 1, "nothing queued"
    assert adtarget.events == []


async def test_adtarget_refusals_exit_1(
    running: RunningBridge, env: dict[str, str], tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    unknown = await bot(env, tmp_path, "fire", "123", "Lead")
    assert unknown.status == 1
    assert unknown.err == "joinbridge fire: AdTarget has no lead for user 123; nothing queued.\n"
    missing = await bot(env, tmp_path, "value", str(JOINER), "nope-1", "5", "EUR")
    assert missing.status == 1
    assert f"AdTarget has no conversion nope-1 for user {JOINER}; nothing queued." in missing.err
    adtarget.revoke_key()
    revoked = await bot(env, tmp_path, "fire", str(JOINER), "Lead")
    assert revoked.status == 1
    assert "AdTarget refused the API key (HTTP 401 REVOKED_KEY" in revoked.err
    assert FakeAdTarget.API_KEY not in revoked.err + revoked.out
    assert await running.scalar("SELECT count(*) FROM outbox") == 1, "nothing queued"


async def test_value_is_queued_and_delivered(
    running: RunningBridge, env: dict[str, str], tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    conversion_id = adtarget.conversions[0]["conversionId"]
    ran = await bot(env, tmp_path, "value", str(JOINER), conversion_id, "49.90", "USD")
    assert ran.status == 0, ran.err
    assert f"Value 49.9 USD for conversion {conversion_id} of user {JOINER} queued" in ran.out
    await eventually(lambda: len(adtarget.values) == 1, timeout=20, what="value delivered")
    assert adtarget.values[0]["value"] == 49.9


@pytest.mark.one_engine  # a missing SQLite file
async def test_settings_and_database_problems_exit_2(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    env = bridge_env(tmp_path, telegram, adtarget)
    no_database = await bot(env, tmp_path, "fire", str(JOINER), "Lead")
    assert no_database.status == 2
    assert "database: " in no_database.err
    assert "does not exist" in no_database.err
    bad = await bot({**env, "ADTARGET_API_URL": "adtarget.io"}, tmp_path, "lead", "1")
    assert bad.status == 2
    assert bad.err.startswith("joinbridge: configuration error: ADTARGET_API_URL is invalid")
    assert bad.err.count("\n") == 1
    assert adtarget.received == []


@pytest.mark.one_engine  # SQLite's file lock
async def test_a_locked_database_exits_1_so_a_script_retries(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    """ "database is locked" is passing: exit 1 (try again), not 2 (fix your arguments)."""
    env = bridge_env(tmp_path, telegram, adtarget)
    await (await open_database(Path(env["DATABASE_PATH"]))).close()
    holder = sqlite3.connect(env["DATABASE_PATH"], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer that holds on past the busy timeout
        locked = await bot(env, tmp_path, "fire", str(JOINER), "Lead")
    finally:
        holder.rollback()
        holder.close()
    assert locked.status == 1, locked.err
    assert "database is locked" in locked.err
    assert locked.err.count("\n") == 1
    assert "Traceback" not in locked.err
