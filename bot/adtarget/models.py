"""Pydantic models of every AdTarget request body and answer (/work/shared/adtarget-api.md).

Field names are snake_case here and the doc's camelCase on the wire (aliases).
Requests are strict (unknown fields are our own typos, so they are refused);
answers are tolerant (a newer AdTarget may add fields, and the reference leaves
some formats open), but what the bridge reads must be there.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from bot.adtarget import wire

EventTypeName = Literal["Lead", "Purchase", "CompleteRegistration", "Subscribe", "Custom"]

_CURRENCY = re.compile(r"[A-Z]{3}")


def _currency(value: str) -> str:
    if not _CURRENCY.fullmatch(value):
        raise ValueError(
            f"must be an ISO 4217 code (3 upper-case letters, like EUR), not {value!r}"
        )
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _uuid(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError("must be a UUID") from None
    return value


Text = Annotated[str, Field(min_length=1)]
Currency = Annotated[str, AfterValidator(_currency)]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveAmount = Annotated[float, Field(gt=0, allow_inf_nan=False)]
EventTimeMs = Annotated[StrictInt, Field(ge=0)]
TelegramUserId = Annotated[int, Field(gt=0)]
Url = Annotated[str, AfterValidator(_http_url)]
TempId = Annotated[str, AfterValidator(_uuid)]


class _Request(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
    )

    def body(self) -> dict[str, Any]:
        """The JSON body: the doc's field names, absent fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True, slots=True)
class Call:
    """One AdTarget write as the outbox stores it and the client sends it: the
    path (under /api/v1), the JSON body and the visitor's forwarding headers.
    Every write is built as a request model's `call`, wherever it is sent from."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] | None = None


def _visitor_call(
    path: str, request: _Request, client_ip: str | None, user_agent: str | None
) -> Call:
    body, headers = wire.visitor_headers(request.body(), client_ip, user_agent)
    return Call(path, body, headers or None)


class _Answer(BaseModel):
    # Ids may come back as numbers from some deployments; the bridge keeps text.
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
        coerce_numbers_to_str=True,
        frozen=True,
    )


# ---- requests --------------------------------------------------------------


class VisitRequest(_Request):
    """POST /api/v1/events/visit. Only `href` is required. Fields in the doc's order."""

    temp_id: TempId | None = None
    client_session_id: Text | None = None
    external_user_id: Text | None = None
    href: Url
    landing_page: Text | None = None
    referrer: str | None = None
    client_ip: Text | None = None
    user_agent: Text | None = None
    country: Text | None = None
    city: Text | None = None
    region: Text | None = None
    fbc: Text | None = None
    fbp: Text | None = None
    gclid: Text | None = None
    ttclid: Text | None = None
    sccid: Text | None = None
    utm_source: Text | None = None
    utm_medium: Text | None = None
    utm_campaign: Text | None = None
    utm_content: Text | None = None
    utm_term: Text | None = None

    def call(self, client_ip: str | None = None, user_agent: str | None = None) -> Call:
        """The visitor's IP and User-Agent go as headers (`visitor_headers`)."""
        return _visitor_call(wire.VISIT_PATH, self, client_ip, user_agent)


class UpdateFbpRequest(_Request):
    """POST /api/v1/events/update-fbp."""

    temp_id: Text
    fbp: Text

    def call(self, client_ip: str | None = None, user_agent: str | None = None) -> Call:
        return _visitor_call(wire.UPDATE_FBP_PATH, self, client_ip, user_agent)


class InviteRequest(_Request):
    """POST /api/v1/events/invite. `channel_id`: AdTarget's id or the `-100…` id."""

    temp_id: Text
    client_session_id: Text | None = None
    channel_id: Text

    def call(self, client_ip: str | None = None, user_agent: str | None = None) -> Call:
        return _visitor_call(wire.INVITE_PATH, self, client_ip, user_agent)


class Pii(_Request):
    email: Text | None = None
    phone: Text | None = None
    first_name: Text | None = None
    last_name: Text | None = None


class _EventFields(_Request):
    """What /events/conversion and /leads/{id}/events share."""

    event_type: EventTypeName
    custom_event_name: Text | None = None
    value: Amount | None = None
    currency: Currency | None = None
    content_name: Text | None = None
    pii: Pii | None = None
    external_user_id: Text | None = None
    event_time: EventTimeMs | None = None  # Unix milliseconds
    fbc: Text | None = None
    fbp: Text | None = None
    gclid: Text | None = None
    ttclid: Text | None = None
    sccid: Text | None = None
    client_ip: Text | None = None
    user_agent: Text | None = None
    event_source_url: Text | None = None
    site_id: Text | None = None
    website_id: Text | None = None

    @model_validator(mode="after")
    def _event_rules(self) -> _EventFields:
        if self.event_type == "Custom" and not self.custom_event_name:
            raise ValueError("customEventName: required when eventType is Custom")
        if self.event_type == "Purchase":
            # Ad platforms drop a Purchase without a value: refuse it here, not later.
            if self.value is None or self.value <= 0:
                raise ValueError("value: a Purchase needs a value > 0")
            if self.currency is None:
                raise ValueError("currency: a Purchase needs an ISO 4217 currency")
        if self.value is not None and self.currency is None:
            raise ValueError("currency: required with a value (ISO 4217, like EUR)")
        return self


class ConversionRequest(_EventFields):
    """POST /api/v1/events/conversion."""

    telegram_user_id: Annotated[StrictInt, Field(gt=0)]
    channel_id: Text

    def call(self) -> Call:
        return Call(wire.CONVERSION_PATH, self.body())


class LeadEventRequest(_EventFields):
    """POST /api/v1/leads/{telegramUserId}/events: channel optional (AdTarget then
    takes the lead's latest conversion's channel)."""

    channel_id: Text | None = None

    def call(self, telegram_user_id: int) -> Call:
        return Call(wire.lead_events_path(telegram_user_id), self.body())


class ValueRequest(_Request):
    """POST /api/v1/leads/{telegramUserId}/conversions/{conversionId}/value."""

    value: PositiveAmount
    currency: Currency
    pii: Pii | None = None

    def call(self, telegram_user_id: int, conversion_id: str) -> Call:
        return Call(wire.conversion_value_path(telegram_user_id, conversion_id), self.body())


# ---- answers ---------------------------------------------------------------


class Cookie(_Answer):
    name: str
    value: str
    max_age: int
    same_site: str = "Lax"


class VisitCookies(_Answer):
    temp_id: Cookie
    session: Cookie


class VisitAnswer(_Answer):
    visit_id: str
    session_id: str
    temp_id: str
    client_session_id: str
    cookies: VisitCookies | None = None


class SuccessAnswer(_Answer):
    """update-fbp and value: `{success}`."""

    success: bool


class InviteAnswer(_Answer):
    invite_link: str


class Send(_Answer):
    send_id: str
    platform: str


class ConversionAnswer(_Answer):
    """/events/conversion and /leads/{id}/events."""

    conversion_id: str
    capi_status: str  # "pending" | "skipped"; kept as text should more appear
    cold_lead: bool = False
    dispatched: bool = False
    warning: str | None = None
    sends: list[Send] = Field(default_factory=list)


# The reference does not say how times are written; the fake uses ISO-8601.
Timestamp = str | int | float


class LeadConversion(_Answer):
    conversion_id: str
    channel_id: str
    event_type: str
    capi_status: str
    attributed_at: Timestamp | None = None
    event_value: float | None = None
    event_currency: str | None = None
    source: str | None = None  # "tracker" | "webhook" | "api"


class Lead(_Answer):
    """GET /api/v1/leads/{telegramUserId}."""

    telegram_user_id: int
    first_seen_at: Timestamp | None = None
    last_seen_at: Timestamp | None = None
    external_user_id: str | None = None
    conversions: list[LeadConversion] = Field(default_factory=list)


class RemoteChannel(_Answer):
    """One of GET /api/v1/channels: AdTarget's id beside Telegram's."""

    channel_id: str
    telegram_channel_id: str
    title: str = ""
    username: str | None = None
    funnel_order: int | None = None
    event_type: str | None = None


class ChannelList(_Answer):
    channels: list[RemoteChannel] = Field(default_factory=list)


def describe_invalid(error: ValidationError) -> str:
    """`value: must be > 0; currency: …` with the doc's field names, for people."""
    parts = []
    for item in error.errors():
        where = ".".join(to_camel(p) if isinstance(p, str) else str(p) for p in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "required"
        elif item["type"] == "extra_forbidden":
            message = "not a field of this request"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
