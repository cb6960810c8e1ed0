"""What an AdTarget answer means for an outbox row, how long to back off, and
the courier's settings.

Pure functions and plain data: the courier applies them, the unit tests pin them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from bot.adtarget.client import ApiAnswer
from bot.adtarget.errors import (
    AdTargetError,
    AuthError,
    ConversionNotFound,
    LeadNotFound,
    RateLimited,
    SubscriptionInactive,
    Unsendable,
    no_conversion,
    no_lead,
)
from bot.adtarget.wire import value_path_conversion
from bot.backoff import Backoff
from storage.outbox import OutboxRow


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: back off and send again
    RATE_LIMITED = "rate_limited"  # wait Retry-After, then send again
    PARK = "park"  # will not succeed as is: keep it visible for an admin
    PAUSE_AUTH = "pause_auth"  # 401: stop sending anything, probe now and then
    PAUSE_BILLING = "pause_billing"  # 402: stop sending, probe slowly


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str
    retry_after: float | None = None


# What each kind of AdTarget answer (bot/adtarget/errors.py classifies them)
# does to an outbox row; any other kind is retried when it may pass later and
# parked otherwise (an invalid body, an unknown channel, lead or route: the row
# waits, visible and retryable, for an admin).
_VERDICTS: dict[type[AdTargetError], Verdict] = {
    AuthError: Verdict.PAUSE_AUTH,
    SubscriptionInactive: Verdict.PAUSE_BILLING,
    RateLimited: Verdict.RATE_LIMITED,
}


def verdict_of(error: AdTargetError) -> Verdict:
    """The one place an AdTarget answer becomes what the outbox does with the row."""
    verdict = _VERDICTS.get(type(error))
    if verdict is None:
        verdict = Verdict.RETRY if error.retryable else Verdict.PARK
    return verdict


def classify_answer(answer: ApiAnswer, row: OutboxRow | None = None) -> Outcome:
    reason = answer.describe()
    if answer.ok:
        return Outcome(Verdict.DELIVERED, reason)
    error = answer.error()
    verdict = verdict_of(error)
    if verdict is Verdict.PARK:
        if row is not None:
            reason = _park_reason(error, row, reason)
        return Outcome(verdict, reason)
    if verdict in (Verdict.RETRY, Verdict.RATE_LIMITED):
        return Outcome(verdict, reason, answer.retry_after)
    return Outcome(verdict, reason)


def _park_reason(error: AdTargetError, row: OutboxRow, described: str) -> str:
    """A follow-up's 404 said plainly, with AdTarget's own words after it."""
    user = row.telegram_user_id
    if user is None:
        return described
    if isinstance(error, LeadNotFound):
        return f"{no_lead(user)} ({described})"
    if isinstance(error, ConversionNotFound):
        conversion = value_path_conversion(row.path) or "?"
        return f"{no_conversion(user, conversion)} ({described})"
    return described


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a success answer says about the row (a conversion's fields; others
    answer none of them)."""

    conversion_id: str | None
    dispatched: bool | None
    warning: str | None

    @classmethod
    def of(cls, body: Any) -> Accepted:
        fields = body if isinstance(body, dict) else {}
        dispatched = fields.get("dispatched")
        if not isinstance(dispatched, bool):
            # capiStatus says the same ("pending": a send scheduled) should an
            # answer lack dispatched; any other status leaves it unknown.
            dispatched = _CAPI_DISPATCHED.get(str(fields.get("capiStatus")))
        return cls(
            conversion_id=_opt_str(fields.get("conversionId")),
            dispatched=dispatched,
            warning=_opt_str(fields.get("warning")),
        )


_CAPI_DISPATCHED = {"pending": True, "skipped": False}


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def classify_exception(error: Exception) -> Outcome:
    """Timeouts and connection errors: AdTarget may or may not have processed it,
    so the row is sent again with the same Idempotency-Key. A request that could
    not be built was never sent, and never will be: parked at once."""
    if isinstance(error, Unsendable):
        return Outcome(verdict_of(error), f"request cannot be built: {error.message}")
    if isinstance(error, httpx.TimeoutException):
        return Outcome(Verdict.RETRY, f"timeout ({type(error).__name__})")
    if isinstance(error, httpx.TransportError):
        return Outcome(Verdict.RETRY, f"connection error ({type(error).__name__}: {error})")
    return Outcome(Verdict.RETRY, f"unexpected error ({type(error).__name__}: {error})")


# Rows whose delivery AdTarget's lead record can confirm, past the idempotency window.
CHECKABLE_KINDS = frozenset({"conversion", "lead_event", "conversion_value"})


def find_matching_conversion(lead: dict[str, Any], row: OutboxRow) -> str | None:
    """The conversion AdTarget holds that this row already created, if any.

    A conversion or follow-up event: one of the row's event type (and channel,
    when the row names one; a follow-up may leave it to AdTarget) at or after the
    row's event time. A value: the named conversion already carries a value.
    """
    conversions = [c for c in lead.get("conversions") or [] if isinstance(c, dict)]
    if row.kind == "conversion_value":
        wanted = row.path.rstrip("/").split("/")[-2]  # .../conversions/{id}/value
        for conversion in conversions:
            if str(conversion.get("conversionId")) == wanted and conversion.get("eventValue"):
                return wanted
        return None
    channel = row.body.get("channelId")
    event = row.body.get("eventType")
    since_ms = row.event_time_ms or 0
    for conversion in conversions:
        if channel is not None and str(conversion.get("channelId")) != str(channel):
            continue
        if conversion.get("eventType") != event:
            continue
        at = _parse_time_ms(conversion.get("attributedAt"))
        if at is not None and at >= since_ms:
            found = conversion.get("conversionId")
            return (None if found is None else str(found)) or "unknown"
    return None


def _parse_time_ms(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Tolerate seconds or milliseconds: the public reference does not say.
        return int(value if value > 10**11 else value * 1000)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return int(parsed.timestamp() * 1000)
    return None


@dataclass(frozen=True, slots=True)
class CourierConfig:
    concurrency: int = 4
    request_timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_window: float = 23 * 3600.0
    idempotency_window: float = 24 * 3600.0
    auth_probe_interval: float = 300.0
    billing_probe_interval: float = 1800.0
    shutdown_grace: float = 5.0
    # In-process writers wake the courier, and on PostgreSQL other processes'
    # rows notify it (`Courier.listen`); on SQLite a row written by another
    # process (`joinbridge fire`) is only seen by looking, so it looks this often.
    poll_interval: float = 2.0
    # Visit and update-fbp forwards older than this are dropped (OUTBOX_FORWARDS_MAX_AGE).
    forwards_max_age: float = 6 * 3600.0
    # At start, every row left `sending` is an orphan when this process is the only
    # one (SQLite's instance lock); several processes on PostgreSQL rescue only the
    # rows whose lease ran out: a deposed leader may still be finishing its sends.
    sole_process: bool = True

    @property
    def backoff(self) -> Backoff:
        """A row's wait after its n-th failed attempt. Jittered over the upper half
        of each wait, so the retries of many rows that failed together do not hit
        a recovering AdTarget all at once."""
        return Backoff(base=self.backoff_base, cap=self.backoff_cap, jitter=0.5)

    @property
    def lease(self) -> float:
        # Long enough that a send still in flight is never rescued under it.
        return self.request_timeout * 2 + 30.0

    @property
    def sweep_interval(self) -> float:
        """How often expired leases are rescued and forwards past their age
        dropped: a minute, or a quarter of that age when it is shorter, so a
        forward outlives its age by a quarter of it at most."""
        return min(60.0, self.forwards_max_age / 4)


@dataclass(slots=True)
class CourierAlerts:
    """Hooks for telling admins; the defaults do nothing."""

    paused: Callable[[str], None] = lambda reason: None
    resumed: Callable[[], None] = lambda: None
    parked: Callable[[int, str], None] = lambda row_id, reason: None


@dataclass(frozen=True, slots=True)
class Pause:
    reason: str
    since: float
    manual: bool = False
