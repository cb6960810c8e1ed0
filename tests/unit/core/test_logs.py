"""Logs: secrets never reach them, not even inside a traceback; LOG_FORMAT=json lines
parse and carry the ids of the update or row they are about."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiogram.types import TelegramObject
from pydantic import ValidationError

from bot.cli.run import secrets
from bot.logs import JsonFormatter, RedactingFormatter, configure, ids
from bot.settings import Settings, describe_error
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, RunningBridge, bridge_settings

TOKEN = "123456:AAE-secret-token-value"


def test_secret_is_redacted_in_message_and_traceback() -> None:
    formatter = RedactingFormatter("%(message)s", [TOKEN, "atk_live_key_value"])
    try:
        raise ValueError(f"cannot reach https://api.telegram.org/bot{TOKEN}/getMe")
    except ValueError as error:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed with %s", ("atk_live_key_value",), None
        )
        record.exc_info = (type(error), error, error.__traceback__)
    text = formatter.format(record)
    assert TOKEN not in text
    assert "atk_live_key_value" not in text
    assert text.count("[redacted]") >= 2


def test_short_secrets_are_redacted_where_they_stand_alone() -> None:
    formatter = RedactingFormatter("%(message)s", ["k", "ab", "s3cr", "", TOKEN])
    line = formatter.format(
        _record(
            "token=%s key: %s Bearer %s in /x/%s/y, quoted '%s'",
            "s3cr",
            "ab",
            "k",
            "ab",
            "s3cr",
        )
    )
    assert line == (
        "token=[redacted] key: [redacted] Bearer [redacted] in /x/[redacted]/y, quoted '[redacted]'"
    )
    # Inside words they are left: blanking every "k" would wreck every line.
    words = "keep abstract s3crets bk_ab kab"
    assert formatter.format(_record(words)) == words


def test_a_short_secret_in_a_json_line_is_redacted() -> None:
    entry = json.loads(JsonFormatter(['a"b', "t"]).format(_record("got %s and %s", 'a"b', "t")))
    assert entry["msg"] == "got [redacted] and [redacted]"


def test_every_configured_secret_is_passed_to_the_logs() -> None:
    settings = Settings(
        _env_file=None, bot_token=TOKEN, adtarget_api_key="atk_x", tracker_token="t1"
    )
    assert secrets(settings) == [TOKEN, "atk_x", "t1"]
    assert secrets(Settings(_env_file=None, bot_token=TOKEN, adtarget_api_key="k")) == [TOKEN, "k"]


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("bot.courier.service", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_time_level_logger_message_and_ids() -> None:
    formatter = JsonFormatter([TOKEN])
    line = formatter.format(
        _record("outbox row %d delivered", 17, **ids(outbox_id=17, chat_id=-100, user_id=None))
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "outbox row 17 delivered"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "bot.courier.service"
    assert entry["outbox_id"] == 17
    assert entry["chat_id"] == -100
    assert "user_id" not in entry  # None ids are left out
    stamp = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert abs(stamp.timestamp() - time.time()) < 3600


def test_json_never_carries_a_secret_even_in_a_traceback_or_escaped() -> None:
    key = 'atk_live_ab"cd\\ef_secret'  # escaped by json.dumps
    tracker = "tracker-token-value"
    formatter = JsonFormatter([TOKEN, key, tracker])
    try:
        raise RuntimeError(f"GET https://api.telegram.org/bot{TOKEN}/getMe with {key}")
    except RuntimeError as error:
        record = _record("failed: %s %s", key, tracker, update_id=5)
        record.exc_info = (type(error), error, error.__traceback__)
    line = formatter.format(record)
    entry = json.loads(line)
    assert entry["update_id"] == 5
    assert "Traceback" in entry["exc"]
    for secret in (TOKEN, key, json.dumps(key)[1:-1], tracker):
        assert secret not in line
    assert "[redacted]" in entry["exc"]
    assert entry["msg"] == "failed: [redacted] [redacted]"


def test_configure_picks_the_format() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        configure("INFO", [TOKEN], "json")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        configure("INFO", [TOKEN])
        formatter = root.handlers[0].formatter
        assert isinstance(formatter, RedactingFormatter)
        assert not isinstance(formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_log_format_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADTARGET_API_KEY", "atk_live_x")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert "LOG_FORMAT is invalid" in describe_error(caught.value)


@pytest.fixture
def json_log(telegram: FakeTelegram) -> Iterator[io.StringIO]:
    """Everything logged, as LOG_FORMAT=json writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter([telegram.token, FakeAdTarget.API_KEY, "tracker-secret-123"])
    )
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_bridge_lines_carry_update_and_row_ids(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, json_log: io.StringIO
) -> None:
    running = RunningBridge(
        bridge_settings(tmp_path, telegram, adtarget, tracker_token="tracker-secret-123")
    )
    await running.start()
    try:
        await running.track_channel(telegram)
        failures = 1

        # A fault injected through aiogram's public middleware API: the first delivery
        # fails with the token in its message, as a URL in a network error would.
        async def leaky(
            handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
            event: TelegramObject,
            data: dict[str, Any],
        ) -> Any:
            nonlocal failures
            if failures:
                failures -= 1
                raise RuntimeError(f"POST {telegram.url}/bot{telegram.token}/getChatMember: reset")
            return await handler(event, data)

        running.bridge.dispatcher.chat_member.outer_middleware(leaky)
        url = await running.mint("0c0c0c0c-0000-4000-8000-000000000003", fbc="fb.1.1.x")
        update_id = telegram.join(CHANNEL_ID, 8800003, url)
        await adtarget.wait_for_conversions(1)
        await running.wait_scalar("SELECT state FROM outbox WHERE kind = 'conversion'", "delivered")
        join_id = await running.scalar("SELECT id FROM joins")
        row_id = await running.scalar("SELECT id FROM outbox WHERE kind = 'conversion'")
    finally:
        assert await running.stop() == 0
    text = json_log.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines
    joined = [e for e in lines if e.get("join_id") == join_id]
    assert len(joined) == 1
    assert joined[0]["update_id"] == update_id
    assert joined[0]["user_id"] == 8800003
    assert joined[0]["chat_id"] == CHANNEL_ID
    assert f"update {update_id}:" in joined[0]["msg"]
    delivered = [e for e in lines if e.get("outbox_id") == row_id]
    assert any(f"outbox row {row_id} delivered" in e["msg"] for e in delivered)
    assert all(e["user_id"] == 8800003 for e in delivered)
    (failed,) = [e for e in lines if e["level"] == "ERROR" and e.get("update_id") == update_id]
    assert f"update {update_id} (chat_member) failed" in failed["msg"]
    assert "Traceback" in failed["exc"]
    assert "/bot[redacted]/getChatMember" in failed["exc"]
    for secret in (telegram.token, FakeAdTarget.API_KEY, "tracker-secret-123"):
        assert secret not in text
