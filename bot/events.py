"""AdTarget event types as a channel owner names them (`Lead`, `Custom:Retained7d`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

STANDARD_EVENTS = ("Lead", "Purchase", "CompleteRegistration", "Subscribe")
_CUSTOM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}$")


@dataclass(frozen=True, slots=True)
class EventType:
    """`name` is AdTarget's eventType; `custom_name` is set only for `Custom`."""

    name: str
    custom_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> EventType:
        text = text.strip()
        if text in STANDARD_EVENTS:
            return cls(text)
        if text.startswith("Custom:"):
            custom = text.removeprefix("Custom:").strip()
            if not _CUSTOM_NAME.match(custom):
                raise ValueError(
                    "a custom event name is 1-64 letters, digits, spaces, '_', '.' or '-'"
                )
            return cls("Custom", custom)
        allowed = ", ".join((*STANDARD_EVENTS, "Custom:<Name>"))
        raise ValueError(f"unknown event type {text!r}; use one of {allowed}")

    def __str__(self) -> str:
        return f"Custom:{self.custom_name}" if self.custom_name else self.name

    def as_fields(self) -> dict[str, str]:
        """The eventType (and customEventName) fields of an AdTarget body."""
        if self.custom_name:
            return {"eventType": "Custom", "customEventName": self.custom_name}
        return {"eventType": self.name}
