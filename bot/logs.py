"""Logging set-up, with secrets scrubbed from every line as a last line of defence.

Two formats (LOG_FORMAT): `text`, one readable line per event, and `json`, one
JSON object per line for log collectors: `ts` (ISO 8601, UTC), `level`,
`logger`, `msg`, the ids the line is about as fields of their own (`update_id`,
`outbox_id`, `chat_id`, `user_id`, `join_id`, `link_id`, ...; passed with
`extra=ids(...)`), and `exc` for a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def ids(**values: int | str | None) -> dict[str, int | str]:
    """`extra=` for a line about these updates or rows; absent (None) ids are left out."""
    return {name: value for name, value in values.items() if value is not None}


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then replaces any secret in the whole text, tracebacks
    included (a URL in an exception can carry the bot token)."""

    def __init__(self, fmt: str | None, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = [s for s in secrets if len(s) >= 6]

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            # As written, and as json.dumps escapes it inside a JSON line.
            for form in (secret, json.dumps(secret)[1:-1]):
                if form in text:
                    text = text.replace(form, "[redacted]")
        return text


class JsonFormatter(RedactingFormatter):
    """One JSON object per line; redaction runs on the serialized line itself, so
    no field (a message, an id, a traceback) can carry a secret out."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(None, secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and not name.startswith("_") and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self.redact(json.dumps(entry, default=str, ensure_ascii=False))


def configure(level: str, secrets: list[str], log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = (
        JsonFormatter(secrets) if log_format == "json" else RedactingFormatter(TEXT_FORMAT, secrets)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per update from aiogram and per request from httpx is noise at INFO.
    if level != "DEBUG":
        logging.getLogger("aiogram.event").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
