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
import re
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


REDACTED = "[redacted]"

# Secrets this long are replaced wherever they occur; shorter ones only where they
# stand on their own (see RedactingFormatter).
REDACT_ANYWHERE_FROM = 6


def ids(**values: int | str | None) -> dict[str, int | str]:
    """`extra=` for a line about these updates or rows; absent (None) ids are left out."""
    return {name: value for name, value in values.items() if value is not None}


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then replaces every secret in the whole text, tracebacks
    included (a URL in an exception can carry the bot token).

    Every secret is redacted whatever its length, each as written and as
    json.dumps escapes it inside a JSON line. A secret of REDACT_ANYWHERE_FROM
    characters or more is replaced wherever it occurs. A shorter one (a
    TRACKER_TOKEN of "abc", say) is replaced only where it stands on its own,
    with no letter, digit or underscore glued to either side: as a value after
    `=`, `: ` or `Bearer `, in quotes, between slashes. Replaced inside words
    too, a one- or two-character secret would blank out that letter across
    every line, leaving the logs unreadable and, from the pattern of the gaps,
    giving the secret away. (Bot tokens and AdTarget keys are far longer; a
    secret of blanks only cannot be told from the spaces of a line, and is left.)
    """

    def __init__(self, fmt: str | None, secrets: list[str]) -> None:
        super().__init__(fmt)
        forms = dict.fromkeys(
            form for s in secrets if s.strip() for form in (s, json.dumps(s)[1:-1])
        )
        # Longest first, so a secret inside a longer one never leaves that one's tail.
        ordered = sorted(forms, key=len, reverse=True)
        self._anywhere = [f for f in ordered if len(f) >= REDACT_ANYWHERE_FROM]
        alone = [f for f in ordered if len(f) < REDACT_ANYWHERE_FROM]
        self._alone = (
            re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, alone))})(?!\w)") if alone else None
        )

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))

    def redact(self, text: str) -> str:
        for form in self._anywhere:
            if form in text:
                text = text.replace(form, REDACTED)
        if self._alone is not None:
            text = self._alone.sub(REDACTED, text)
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
