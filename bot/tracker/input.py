"""Validating what landing pages send to the tracker: pure functions, no I/O.

Every rejection is an `InputError` naming the offending field, which the web layer
turns into a 400 INVALID_PAYLOAD. Field names and limits follow AdTarget's visit
contract (camelCase in the body, snake_case in `VisitInput`).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bot.tracker.clients import UA_MAX, header_text, ip_address_or_none

MAX_BODY_BYTES = 16 * 1024
ID_MAX = 512  # tempId, clientSessionId, externalUserId and the click ids
URL_MAX = 2048  # href, landingPage, referrer
TEXT_MAX = 256  # everything else
CHANNEL_ID_MAX = 128

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# re.ASCII: "\d" or "\w" would also take "²" or "٣", which int() or Telegram refuse.
_TELEGRAM_ID = re.compile(r"-?[0-9]+", re.ASCII)  # all digits: never an AdTarget id
_USERNAME = re.compile(r"[A-Za-z0-9_]{4,32}", re.ASCII)
_ADTARGET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
_UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
_CLICK_IDS: dict[str, tuple[str, ...]] = {
    "gclid": ("gclid",),
    "ttclid": ("ttclid",),
    "sccid": ("ScCid", "sccid"),
}


class InputError(ValueError):
    """`field: why` — becomes a 400 INVALID_PAYLOAD with this message."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


@dataclass(frozen=True, slots=True)
class VisitInput:
    """What the bridge stores for a visit; optional strings are None when absent or empty."""

    temp_id: str | None
    client_session_id: str | None
    external_user_id: str | None
    href: str
    landing_page: str | None
    referrer: str | None
    client_ip: str | None
    user_agent: str | None
    country: str | None
    city: str | None
    region: str | None
    fbc: str | None
    fbp: str | None
    gclid: str | None
    ttclid: str | None
    sccid: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_content: str | None
    utm_term: str | None


def parse_json_object(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The request body as a JSON object; `content_type` is the raw header value."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise InputError("body", "Content-Type must be application/json")
    if len(raw) > MAX_BODY_BYTES:
        raise InputError("body", "larger than 16 KB")
    try:
        # Decode explicitly: json.loads(bytes) would also guess UTF-16/32.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError("body", f"not valid JSON: invalid UTF-8 at byte {err.start}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InputError("body", f"not valid JSON: {err.msg} at char {err.pos}") from None
    except RecursionError:
        raise InputError("body", "not valid JSON: nested too deeply") from None
    except ValueError as err:  # NaN/Infinity, or an integer past Python's digit limit
        raise InputError("body", f"not valid JSON: {str(err).split(':', 1)[0]}") from None
    if not isinstance(value, dict):
        raise InputError("body", "must be a JSON object")
    return value


def parse_visit(body: dict[str, Any], *, now_ms: int) -> VisitInput:
    """A visit from AdTarget's visit body; click ids and UTM fall back to href's query."""
    href = _href(body.get("href"))
    return _visit(body, href, _url_fields([_first_values(href)], now_ms=now_ms))


def parse_update_fbp(body: dict[str, Any]) -> tuple[str, str]:
    """(tempId lower-cased, fbp) from an update-fbp body; both are required."""
    temp_id = _opt_uuid(body, "tempId")
    if temp_id is None:
        raise InputError("tempId", "required")
    fbp = _opt_str(body, "fbp", ID_MAX)
    if fbp is None:
        raise InputError("fbp", "required")
    return temp_id, fbp


def parse_invite(body: dict[str, Any]) -> tuple[str | None, str | None, str]:
    """(tempId or None, clientSessionId or None, channelId) from an invite body."""
    temp_id = _opt_uuid(body, "tempId")
    session_id = _opt_str(body, "clientSessionId", ID_MAX)
    raw = body.get("channelId")
    if raw is None:
        raise InputError("channelId", "required")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InputError("channelId", "must be a string or an integer")
    if isinstance(raw, int):
        if raw.bit_length() > 4 * CHANNEL_ID_MAX:  # str() of a huge int is slow or refused
            raise InputError("channelId", f"longer than {CHANNEL_ID_MAX} characters")
        raw = str(raw)
    return temp_id, session_id, parse_channel_ref(raw)


def parse_channel_ref(raw: str) -> str:
    """channelId as a landing page may give it: a Telegram id (-100…, within int64),
    an @username, or an AdTarget channel id (ASCII letters, digits, '_' and '-',
    starting with a letter or digit, at most 64 characters)."""
    text = _checked("channelId", raw, CHANNEL_ID_MAX)
    if text is None:
        raise InputError("channelId", "required")
    if _TELEGRAM_ID.fullmatch(text):
        if not -(2**63) <= int(text) < 2**63:
            raise InputError("channelId", "outside the range of Telegram ids")
        return str(int(text))
    if text.startswith("@"):
        if not _USERNAME.fullmatch(text[1:]):
            raise InputError("channelId", "not a Telegram @username (4-32 of A-Z, a-z, 0-9, _)")
        return text
    if not _ADTARGET_ID.fullmatch(text):
        raise InputError(
            "channelId",
            "must be a -100… Telegram id, an @username, or an AdTarget channel id"
            " (letters, digits, _ and -, up to 64)",
        )
    return text


def visit_from_query(
    query: Mapping[str, str], *, href: str | None, referrer: str | None, now_ms: int
) -> VisitInput:
    """A visit for GET /track/invite without a tempId: click ids and UTM come from the
    request's query, else from the page URL's query. `href` is the page URL (the
    request's Referer); there is no synthetic fallback."""
    page = _href(href)
    from_url = _url_fields([query, _first_values(page)], now_ms=now_ms)
    return _visit({"referrer": referrer}, page, from_url)


def _visit(body: Mapping[str, Any], href: str, from_url: Mapping[str, str | None]) -> VisitInput:
    """The body's fields, with `from_url` filling click ids and UTM the body lacks."""
    client_ip = _opt_str(body, "clientIp", TEXT_MAX)
    if client_ip is not None:
        address = ip_address_or_none(client_ip)
        if address is None:
            raise InputError("clientIp", "must be an IP address")
        client_ip = str(address)

    def pick(field: str, key: str, limit: int) -> str | None:
        given = _opt_str(body, field, limit)
        return given if given is not None else from_url[key]

    return VisitInput(
        temp_id=_opt_uuid(body, "tempId"),
        client_session_id=_opt_str(body, "clientSessionId", ID_MAX),
        external_user_id=_opt_str(body, "externalUserId", ID_MAX),
        href=href,
        landing_page=_opt_str(body, "landingPage", URL_MAX),
        referrer=_opt_str(body, "referrer", URL_MAX),
        client_ip=client_ip,
        user_agent=_header_str(body, "userAgent", UA_MAX),
        country=_opt_str(body, "country", TEXT_MAX),
        city=_opt_str(body, "city", TEXT_MAX),
        region=_opt_str(body, "region", TEXT_MAX),
        fbc=pick("fbc", "fbc", ID_MAX),
        fbp=_opt_str(body, "fbp", ID_MAX),
        gclid=pick("gclid", "gclid", ID_MAX),
        ttclid=pick("ttclid", "ttclid", ID_MAX),
        sccid=pick("sccid", "sccid", ID_MAX),
        utm_source=pick("utmSource", "utm_source", TEXT_MAX),
        utm_medium=pick("utmMedium", "utm_medium", TEXT_MAX),
        utm_campaign=pick("utmCampaign", "utm_campaign", TEXT_MAX),
        utm_content=pick("utmContent", "utm_content", TEXT_MAX),
        utm_term=pick("utmTerm", "utm_term", TEXT_MAX),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _checked(field: str, value: object, limit: int) -> str | None:
    """A stripped string, None when null or empty; wrong types and overlong values raise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(field, "must be a string")
    value = value.strip()
    if not value:
        return None
    if len(value) > limit:
        raise InputError(field, f"longer than {limit} characters")
    if not _encodable(value):  # lone surrogates from "\ud800" escapes
        raise InputError(field, "contains invalid Unicode")
    return value


def _opt_str(body: Mapping[str, Any], field: str, limit: int) -> str | None:
    return _checked(field, body.get(field), limit)


def _header_str(body: Mapping[str, Any], field: str, limit: int) -> str | None:
    """A field that is sent on to AdTarget as an HTTP header: printable ASCII only."""
    value = _opt_str(body, field, limit)
    if value is not None and not header_text(value):
        raise InputError(field, "must be printable ASCII (it is sent on as an HTTP header)")
    return value


def _opt_uuid(body: Mapping[str, Any], field: str) -> str | None:
    value = _opt_str(body, field, ID_MAX)
    if value is None:
        return None
    if not _UUID.fullmatch(value):
        raise InputError(field, "must be a UUID")
    return value.lower()


def _href(value: object) -> str:
    href = _checked("href", value, URL_MAX)
    if href is None:
        raise InputError("href", "required")
    if not _is_http_url(href):
        raise InputError("href", "must be an absolute http(s) URL")
    return href


def _is_http_url(text: str) -> bool:
    if any(ch <= " " or ch == "\x7f" for ch in text):
        return False
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def header_problem(value: str) -> str | None:
    """Why a header value is unusable, or None. aiohttp decodes header bytes that are
    not UTF-8 into lone surrogates; control characters would break an onward header
    or a log line. A horizontal tab is legal inside a header value."""
    if not _encodable(value):
        return "not valid UTF-8 text"
    if any((ch < " " and ch != "\t") or "\x7f" <= ch <= "\x9f" for ch in value):
        return "contains control characters"
    return None


def decoded_body(raw: bytes, content_encoding: str | None) -> bytes:
    """The body as sent before its Content-Encoding (gzip or deflate), at most
    MAX_BODY_BYTES once inflated: a small compressed body may not expand past the
    cap (a "zip bomb")."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in ("gzip", "deflate"):
        raise InputError("body", f"Content-Encoding {encoding!r} is not supported")
    # wbits: 16 + 15 reads gzip; 15 reads zlib-wrapped deflate (what HTTP calls deflate).
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error:
        raise InputError("body", f"not valid {encoding} data") from None
    if len(inflated) > MAX_BODY_BYTES:
        raise InputError("body", "larger than 16 KB")
    if not inflater.eof:
        raise InputError("body", f"not valid {encoding} data: truncated")
    return inflated


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_values(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def _url_fields(sources: Sequence[Mapping[str, str]], *, now_ms: int) -> dict[str, str | None]:
    """fbc, click ids and UTM from URL queries, the first source with a usable value
    winning. Overlong or empty values are dropped rather than rejected: the visitor
    did not choose them and the visit is still worth recording."""

    def first(names: Sequence[str], limit: int) -> str | None:
        for source in sources:
            for name in names:
                value = source.get(name)
                if value is not None:
                    value = value.strip()
                    if value and len(value) <= limit and _encodable(value):
                        return value
        return None

    fields: dict[str, str | None] = {name: first((name,), TEXT_MAX) for name in _UTM}
    for field, names in _CLICK_IDS.items():
        fields[field] = first(names, ID_MAX)
    fields["fbc"] = None
    for source in sources:
        fbclid = source.get("fbclid")
        if fbclid is not None and fbclid.strip():
            # Meta: fbclid verbatim (no case change, no trimming) after the timestamp.
            fbc = f"fb.1.{now_ms}.{fbclid}"
            if len(fbc) <= ID_MAX and _encodable(fbc):
                fields["fbc"] = fbc
                break
    return fields
