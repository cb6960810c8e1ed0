"""AdTarget's error envelope as typed exceptions: the one table of what an answer means.

Every error AdTarget answers is `{"error": {"code", "message"}}` with an HTTP
status (/work/shared/adtarget-api.md, "Errors"). `error_class` is the one
classifier of an answer (like aiogram's `check_response`): the typed client
raises what it returns, and the courier maps it to what happens to an outbox
row (bot/courier/verdicts.py), so callers act on `LeadNotFound`,
`RateLimited`, ... instead of comparing statuses and strings.
"""

from __future__ import annotations

import enum
import re
from typing import Any, ClassVar


class ErrorCode(enum.StrEnum):
    """Every code the API reference documents."""

    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    INVALID_KEY = "INVALID_KEY"
    REVOKED_KEY = "REVOKED_KEY"
    SUBSCRIPTION_INACTIVE = "SUBSCRIPTION_INACTIVE"
    CHANNEL_NOT_FOUND = "CHANNEL_NOT_FOUND"
    LEAD_NOT_FOUND = "LEAD_NOT_FOUND"
    CONVERSION_NOT_FOUND = "CONVERSION_NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    API_DISABLED = "API_DISABLED"


class AdTargetError(Exception):
    """An answer that is not a success, or no usable answer at all.

    `code` is AdTarget's code ("" when the answer carried none, "unreachable"
    when there was no answer); `retry_after` is the Retry-After header in
    seconds; `details` holds any other fields of the error object.
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.details = details or {}

    def __str__(self) -> str:
        """`HTTP 404 LEAD_NOT_FOUND: no conversion for telegramUserId 7`."""
        parts = (f"HTTP {self.status}" if self.status else "", self.code)
        head = " ".join(part for part in parts if part)
        return f"{head}: {self.message}" if self.message else head


class InvalidPayload(AdTargetError):
    """400: the body failed validation; sending it again will not help."""


class AuthError(AdTargetError):
    """401: the key is missing, unknown or revoked."""


class SubscriptionInactive(AdTargetError):
    """402: billing is paused; events resume when it is current."""

    retryable = True


class ChannelNotFound(AdTargetError):
    """404: the channelId is not assigned to this site."""


class LeadNotFound(AdTargetError):
    """404: AdTarget holds no conversion for this Telegram user."""


class ConversionNotFound(AdTargetError):
    """404: the lead has no conversion with that id."""


class RateLimited(AdTargetError):
    """429: over the key's limit; wait `retry_after` seconds."""

    retryable = True


class InternalError(AdTargetError):
    """500: safe to retry with backoff."""

    retryable = True


class ApiDisabled(AdTargetError):
    """503: the API is paused; back off and retry."""

    retryable = True


class Transient(AdTargetError):
    """408 or 425 (from AdTarget or a proxy before it): the request was not
    taken up; sending it again is safe."""

    retryable = True


class UnexpectedAnswer(AdTargetError):
    """A status or body the reference does not describe (an unknown code, HTML
    from a proxy, a success body of the wrong shape)."""


class Unreachable(AdTargetError):
    """No answer: timeout, refused or dropped connection."""

    retryable = True


class Unsendable(AdTargetError):
    """The request could not be built, so nothing was sent (nor a pacing token
    spent): a header value HTTP cannot carry, say. The same request would fail
    the same way every time."""

    def __init__(self, message: str) -> None:
        super().__init__("unsendable", message, status=0)


# What a header value may hold as sent: visible ASCII, space and tab. httpx
# refuses other text while building the request; h11 refuses CR, LF and NUL only
# while writing it out (a TransportError, which reads as retryable); other
# control characters it sends, for a proxy or AdTarget to refuse.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_problem(value: str) -> str | None:
    """Why `value` cannot be sent as an HTTP header value (Unsendable), or None."""
    if _HEADER_VALUE.fullmatch(value):
        return None
    if _CONTROL.search(value):
        return "contains control characters"
    return "contains non-ASCII characters"


_BY_CODE: dict[str, type[AdTargetError]] = {
    ErrorCode.INVALID_PAYLOAD: InvalidPayload,
    ErrorCode.AUTH_REQUIRED: AuthError,
    ErrorCode.INVALID_KEY: AuthError,
    ErrorCode.REVOKED_KEY: AuthError,
    ErrorCode.SUBSCRIPTION_INACTIVE: SubscriptionInactive,
    ErrorCode.CHANNEL_NOT_FOUND: ChannelNotFound,
    ErrorCode.LEAD_NOT_FOUND: LeadNotFound,
    ErrorCode.CONVERSION_NOT_FOUND: ConversionNotFound,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.INTERNAL_ERROR: InternalError,
    ErrorCode.API_DISABLED: ApiDisabled,
}

# When the body carries no (known) code, the status still says what to do.
_BY_STATUS: dict[int, type[AdTargetError]] = {
    400: InvalidPayload,
    401: AuthError,
    402: SubscriptionInactive,
    408: Transient,
    425: Transient,
    429: RateLimited,
    500: InternalError,
    503: ApiDisabled,
}


def error_class(status: int, code: str | None) -> type[AdTargetError]:
    """What a non-2xx answer means: AdTarget's own code names it; without a
    documented code (a proxy's page, an unknown code) the status does, any other
    5xx being a server fault worth retrying and any other status unexpected."""
    kind = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if kind is None:
        kind = InternalError if status >= 500 else UnexpectedAnswer
    return kind


def envelope(body: Any) -> tuple[str | None, str, dict[str, Any]]:
    """(code, message, other fields) of AdTarget's error envelope; (None, "", {})
    when `body` (parsed JSON or None) is not one."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, "", {}
    raw_code = error.get("code")
    code = str(raw_code) if raw_code is not None else None
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    return code, str(error.get("message") or ""), details


def error_from_answer(status: int, body: Any, retry_after: float | None) -> AdTargetError:
    """The typed error for a non-2xx answer (`body`: parsed JSON or None)."""
    code, message, details = envelope(body)
    kind = error_class(status, code)
    if code is None:
        message = message or "not AdTarget's error envelope"
    return kind(code or "", message, status=status, retry_after=retry_after, details=details)


def no_lead(telegram_user_id: int) -> str:
    """LeadNotFound, said plainly."""
    return f"AdTarget has no lead for user {telegram_user_id}"


def no_conversion(telegram_user_id: int, conversion_id: str) -> str:
    """ConversionNotFound, said plainly."""
    return f"AdTarget has no conversion {conversion_id} for user {telegram_user_id}"
