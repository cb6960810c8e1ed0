"""Body validation and small helpers for the AdTarget fake (bot/simulators/adtarget.py).

The fake is deliberately stricter than "whatever works": each check mirrors a
line of /work/shared/adtarget-api.md, so a bridge bug (a float user id, a
lower-case currency, a float eventTime, a null where a string belongs) fails
loudly in tests instead of in production.
Every failure names the field: "<field>: <why>".
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

EVENT_TYPES = ("Lead", "Purchase", "CompleteRegistration", "Subscribe", "Custom")
# A conversion is dispatched to an ad platform only when one of these is present.
SIGNAL_FIELDS = ("fbc", "fbp", "gclid", "ttclid", "sccid")
NO_SIGNAL_WARNING = "No attribution signal matched a configured pixel"
MAX_IDEMPOTENCY_KEY = 128
# 9999-12-31T23:59:59.999Z: anything later cannot be rendered as ISO-8601.
_MAX_EVENT_TIME_MS = 253_402_300_799_999
_CURRENCY = re.compile(r"[A-Z]{3}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_CONVERSION_STRINGS = (
    "contentName",
    "externalUserId",
    *SIGNAL_FIELDS,
    "clientIp",
    "userAgent",
    "eventSourceUrl",
    "siteId",
    "websiteId",
)
_VISIT_STRINGS = (
    "clientSessionId",
    "externalUserId",
    "landingPage",
    "referrer",
    "clientIp",
    "userAgent",
    "country",
    "city",
    "region",
    *SIGNAL_FIELDS,
    "utmSource",
    "utmMedium",
    "utmCampaign",
    "utmContent",
    "utmTerm",
)
_PII_FIELDS = ("email", "phone", "firstName", "lastName")


class PayloadError(Exception):
    """A body that fails validation; str() is the 400 INVALID_PAYLOAD message."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")


def is_int(value: object) -> bool:
    # bool is an int subclass in Python but `true` is not a number in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    # A huge JSON integer would overflow math.isfinite(); "1e400" parses to inf.
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_ms(ms: int) -> str:
    """Unix milliseconds -> "2024-01-02T03:04:05.678Z" (integer maths: no float rounding)."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def landing_page(href: str) -> str:
    """landingPage when absent ("derived from href"): here, href minus query and fragment."""
    parts = urlsplit(href)
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"


def _strings(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    # Null is rejected too: the contract never says a field is nullable.
    for field in fields:
        if field in body and not isinstance(body[field], str):
            raise PayloadError(field, "must be a string")


def _required_str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if field not in body or value == "":
        raise PayloadError(field, "required")
    if not isinstance(value, str):
        raise PayloadError(field, "must be a string")
    return value


def _pii(body: dict[str, Any]) -> None:
    if "pii" not in body:
        return
    pii = body["pii"]
    if not isinstance(pii, dict):
        raise PayloadError("pii", "must be an object")
    for field in _PII_FIELDS:
        if field in pii and not isinstance(pii[field], str):
            raise PayloadError(f"pii.{field}", "must be a string")


def _currency(body: dict[str, Any], *, required: bool) -> None:
    if "currency" not in body:
        if required:
            raise PayloadError("currency", "required")
        return
    currency = body["currency"]
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise PayloadError("currency", "must be an ISO 4217 code (3 uppercase letters)")


def check_conversion(body: dict[str, Any], *, lead_event: bool = False) -> None:
    """/events/conversion; with `lead_event`, /leads/{id}/events (no user id, channel optional)."""
    if not lead_event:
        if "telegramUserId" not in body:
            raise PayloadError("telegramUserId", "required")
        user = body["telegramUserId"]
        if not is_int(user) or user <= 0:
            raise PayloadError("telegramUserId", "must be a positive integer")
    if not lead_event or "channelId" in body:
        _required_str(body, "channelId")
    event_type = _required_str(body, "eventType")
    if event_type not in EVENT_TYPES:
        raise PayloadError("eventType", f"must be one of {', '.join(EVENT_TYPES)}")
    if event_type == "Custom":
        _required_str(body, "customEventName")
    elif "customEventName" in body and not isinstance(body["customEventName"], str):
        raise PayloadError("customEventName", "must be a string")
    if "eventTime" in body:
        event_time = body["eventTime"]
        if not is_int(event_time) or not 0 <= event_time <= _MAX_EVENT_TIME_MS:
            raise PayloadError("eventTime", "must be Unix milliseconds (a non-negative integer)")
    if "value" in body and (not is_number(body["value"]) or body["value"] < 0):
        raise PayloadError("value", "must be a number >= 0")
    _currency(body, required=False)
    _strings(body, _CONVERSION_STRINGS)
    _pii(body)


def check_visit(body: dict[str, Any]) -> None:
    href = _required_str(body, "href")
    parts = urlsplit(href)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PayloadError("href", "must be an absolute http(s) URL")
    if "tempId" in body:
        temp_id = body["tempId"]
        if not isinstance(temp_id, str) or not is_uuid(temp_id):
            raise PayloadError("tempId", "must be a UUID")
    _strings(body, _VISIT_STRINGS)


def check_update_fbp(body: dict[str, Any]) -> None:
    _required_str(body, "tempId")
    _required_str(body, "fbp")


def check_invite(body: dict[str, Any]) -> None:
    _required_str(body, "tempId")
    _strings(body, ("clientSessionId",))
    _required_str(body, "channelId")


def check_value(body: dict[str, Any]) -> None:
    if "value" not in body:
        raise PayloadError("value", "required")
    if not is_number(body["value"]) or body["value"] <= 0:
        raise PayloadError("value", "must be a number > 0")
    _currency(body, required=True)
    _pii(body)


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def has_signal(body: dict[str, Any]) -> bool:
    return any(isinstance(body.get(f), str) and body[f] for f in SIGNAL_FIELDS)


_JSON_TYPES = {bool: "a boolean", list: "an array", str: "a string", int: "a number"}


def not_an_object(body: object) -> str:
    kind = "nothing" if body is None else _JSON_TYPES.get(type(body), "a number")
    return f"body: must be a JSON object, got {kind}"


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; real JSON parsers (AdTarget's) do not.
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> tuple[Any, str | None]:
    """(parsed body or None, error message or None); an empty body is None without error."""
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw, parse_constant=_reject_constant), None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        return None, f"body: malformed JSON ({exc})"


def user_id(text: str) -> int:
    """A telegramUserId path segment."""
    if not re.fullmatch(r"[1-9][0-9]{0,18}", text):
        raise PayloadError("telegramUserId", "must be a positive integer")
    return int(text)


def cookie(name: str, value: str, max_age: int) -> dict[str, Any]:
    return {"name": name, "value": value, "maxAge": max_age, "sameSite": "Lax"}


def conversion(
    body: dict[str, Any], channel: str, cold: bool, now: int, *, inherited_signal: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the lead's conversion entry as GET /leads shows it, the POST answer).

    `inherited_signal`: a warm lead's earlier conversion on this channel carried an
    attribution signal, which the new one inherits ("Warm lead" in the doc)."""
    dispatched = has_signal(body) or (not cold and inherited_signal)
    entry: dict[str, Any] = {
        "conversionId": str(uuid.uuid4()),
        "channelId": channel,
        "eventType": body["eventType"],
        "capiStatus": "pending" if dispatched else "skipped",
        "attributedAt": iso_ms(body.get("eventTime", now)),
        "source": "api",
    }
    if "value" in body:
        entry["eventValue"] = body["value"]
    if "currency" in body:
        entry["eventCurrency"] = body["currency"]
    answer: dict[str, Any] = {
        "conversionId": entry["conversionId"],
        "capiStatus": entry["capiStatus"],
        "coldLead": cold,
        "dispatched": dispatched,
        "sends": [{"sendId": str(uuid.uuid4()), "platform": "meta"}] if dispatched else [],
    }
    if not dispatched:
        answer["warning"] = NO_SIGNAL_WARNING
    return entry, answer


class RateLimiter:
    """Token bucket per API key: `burst` capacity, refilled at `rate` a minute."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic)

    def take(self, key: str) -> int | None:
        """None when a token was taken, else the whole seconds (>= 1) until one is free."""
        now = time.monotonic()
        per_second = self.rate / 60
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * per_second)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return None
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / per_second)) if per_second > 0 else 60


@dataclass
class Fault:
    """An injected fault: fires on `count` requests (None: unlimited) until `deadline`."""

    kind: Literal["fail", "hang", "drop", "late"]
    count: int | None
    deadline: float | None  # time.monotonic()
    paths: tuple[str, ...] | None  # request-path prefixes; None = every /api/v1 path
    seconds: float = 0.0
    status: int = 0
    code: str = ""
    message: str = ""

    def live(self, now: float) -> bool:
        spent = self.count is not None and self.count <= 0
        return not spent and (self.deadline is None or now < self.deadline)


def take_fault(faults: list[Fault], path: str, kinds: tuple[str, ...]) -> Fault | None:
    """The oldest live fault of `kinds` for `path`, one use consumed; spent ones are pruned."""
    now = time.monotonic()
    faults[:] = [f for f in faults if f.live(now)]
    for fault in faults:
        if fault.kind in kinds and (fault.paths is None or path.startswith(fault.paths)):
            if fault.count is not None:
                fault.count -= 1
            return fault
    return None
