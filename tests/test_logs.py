"""Secrets never reach the log, not even inside a traceback."""

from __future__ import annotations

import logging

from bot.logs import RedactingFormatter

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
