"""The tracker's input validation: every rejection names its field."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from bot.settings import parse_trusted_proxies
from bot.tracker.clients import resolve_client
from bot.tracker.input import (
    MAX_BODY_BYTES,
    InputError,
    VisitInput,
    parse_invite,
    parse_json_object,
    parse_update_fbp,
    parse_visit,
    visit_from_query,
)

NOW_MS = 1_700_000_000_123
UUID = "3F2504E0-4F89-41D3-9A0C-0305E82C3301"
UUID_LOWER = UUID.lower()
HREF = "https://yoursite.com/landing"


def visit(**fields: Any) -> VisitInput:
    return parse_visit({"href": HREF, **fields}, now_ms=NOW_MS)


def field_error(exc: pytest.ExceptionInfo[InputError], field: str, why: str) -> None:
    assert exc.value.field == field
    assert exc.value.why == why
    assert str(exc.value) == f"{field}: {why}"


# --- InputError -------------------------------------------------------------


def test_input_error_is_a_value_error_with_field_and_reason() -> None:
    err = InputError("href", "required")
    assert isinstance(err, ValueError)
    assert (err.field, err.why, str(err)) == ("href", "required", "href: required")


# --- parse_json_object ------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"],
)
def test_json_object_accepts_json_content_types(content_type: str) -> None:
    assert parse_json_object(b'{"href": "x", "n": 1}', content_type) == {"href": "x", "n": 1}


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "application/jsonx"],
)
def test_json_object_rejects_other_content_types(content_type: str | None) -> None:
    with pytest.raises(InputError) as exc:
        parse_json_object(b"{}", content_type)
    field_error(exc, "body", "Content-Type must be application/json")


def test_json_object_size_limit() -> None:
    padding = MAX_BODY_BYTES - len(b'{"a": ""}')
    at_limit = b'{"a": "' + b"x" * padding + b'"}'
    assert len(at_limit) == MAX_BODY_BYTES
    assert parse_json_object(at_limit, "application/json")["a"] == "x" * padding
    with pytest.raises(InputError) as exc:
        parse_json_object(at_limit + b" ", "application/json")
    field_error(exc, "body", "larger than 16 KB")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"a": 1,}',
        b"\xff\xfe{}",
        b'{"a": "\xc3"}',
        '{"a": 1}'.encode("utf-16"),
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[" * 5000 + b"]" * 5000,
        b'{"a": ' + b"9" * 5000 + b"}",
    ],
)
def test_json_object_rejects_invalid_json(raw: bytes) -> None:
    with pytest.raises(InputError) as exc:
        parse_json_object(raw, "application/json")
    assert exc.value.field == "body"
    assert exc.value.why.startswith("not valid JSON: ")
    assert len(str(exc.value)) < 200


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"1", b"null", b"true", b'[{"href": "x"}]'])
def test_json_object_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(InputError) as exc:
        parse_json_object(raw, "application/json")
    field_error(exc, "body", "must be a JSON object")


def test_json_object_content_type_checked_before_size() -> None:
    with pytest.raises(InputError) as exc:
        parse_json_object(b"x" * (MAX_BODY_BYTES + 1), "text/plain")
    assert exc.value.why == "Content-Type must be application/json"


# --- parse_visit: href ------------------------------------------------------


def test_visit_minimal_body() -> None:
    v = parse_visit({"href": HREF}, now_ms=NOW_MS)
    assert v.href == HREF
    others = {name: value for name, value in vars_of(v).items() if name != "href"}
    assert set(others.values()) == {None}


def vars_of(v: VisitInput) -> dict[str, object]:
    return {name: getattr(v, name) for name in VisitInput.__dataclass_fields__}


@pytest.mark.parametrize("body", [{}, {"href": None}, {"href": ""}, {"href": "   "}])
def test_visit_href_required(body: dict[str, Any]) -> None:
    with pytest.raises(InputError) as exc:
        parse_visit(body, now_ms=NOW_MS)
    field_error(exc, "href", "required")


@pytest.mark.parametrize("value", [1, 1.5, True, ["https://a.com/"], {"u": 1}])
def test_visit_href_must_be_a_string(value: object) -> None:
    with pytest.raises(InputError) as exc:
        parse_visit({"href": value}, now_ms=NOW_MS)
    field_error(exc, "href", "must be a string")


@pytest.mark.parametrize(
    "href",
    [
        "/landing",
        "yoursite.com/landing",
        "//yoursite.com/landing",
        "ftp://yoursite.com/",
        "javascript:alert(1)",
        "https:yoursite.com",
        "https://",
        "https:///path",
        "http://[::1/",
        "http://yoursite.com:notaport/",
        "https://your site.com/",
        "https://yoursite.com/\nx",
    ],
)
def test_visit_href_must_be_absolute_http(href: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_visit({"href": href}, now_ms=NOW_MS)
    field_error(exc, "href", "must be an absolute http(s) URL")


@pytest.mark.parametrize(
    "href", ["http://a.b/", "HTTPS://YourSite.com/x?y=1#z", "https://[2001:db8::1]:8443/p"]
)
def test_visit_href_accepted(href: str) -> None:
    assert visit(href=f"  {href} ").href == href


def test_visit_href_length() -> None:
    base = "https://yoursite.com/?q="
    ok = base + "a" * (2048 - len(base))
    assert visit(href=ok).href == ok
    with pytest.raises(InputError) as exc:
        visit(href=ok + "a")
    field_error(exc, "href", "longer than 2048 characters")


# --- parse_visit: strings ---------------------------------------------------

STRING_FIELDS = {
    "clientSessionId": ("client_session_id", 512),
    "externalUserId": ("external_user_id", 512),
    "landingPage": ("landing_page", 2048),
    "referrer": ("referrer", 2048),
    "userAgent": ("user_agent", 1024),
    "country": ("country", 256),
    "city": ("city", 256),
    "region": ("region", 256),
    "fbc": ("fbc", 512),
    "fbp": ("fbp", 512),
    "gclid": ("gclid", 512),
    "ttclid": ("ttclid", 512),
    "sccid": ("sccid", 512),
    "utmSource": ("utm_source", 256),
    "utmMedium": ("utm_medium", 256),
    "utmCampaign": ("utm_campaign", 256),
    "utmContent": ("utm_content", 256),
    "utmTerm": ("utm_term", 256),
}


@pytest.mark.parametrize(("field", "spec"), STRING_FIELDS.items())
def test_visit_string_fields(field: str, spec: tuple[str, int]) -> None:
    attr, limit = spec
    assert getattr(visit(**{field: "  value \t"}), attr) == "value"
    assert getattr(visit(**{field: ""}), attr) is None
    assert getattr(visit(**{field: "   "}), attr) is None
    assert getattr(visit(**{field: None}), attr) is None
    assert getattr(visit(**{field: "x" * limit}), attr) == "x" * limit
    assert getattr(visit(**{field: " " + "x" * limit + " "}), attr) == "x" * limit
    with pytest.raises(InputError) as exc:
        visit(**{field: "x" * (limit + 1)})
    field_error(exc, field, f"longer than {limit} characters")


@pytest.mark.parametrize("field", [*STRING_FIELDS, "tempId", "clientIp"])
@pytest.mark.parametrize("value", [123, 0, 1.5, True, False, [], ["a"], {}])
def test_visit_numbers_and_others_where_strings_are_expected(field: str, value: object) -> None:
    with pytest.raises(InputError) as exc:
        visit(**{field: value})
    field_error(exc, field, "must be a string")


def test_visit_rejects_lone_surrogates() -> None:
    body = parse_json_object(b'{"href": "https://a.com/", "city": "\\ud800"}', "application/json")
    with pytest.raises(InputError) as exc:
        parse_visit(body, now_ms=NOW_MS)
    field_error(exc, "city", "contains invalid Unicode")


def test_visit_unknown_fields_ignored() -> None:
    v = visit(unknown=1, utm_source="snake_case_is_not_ours", visitId="x")
    assert v.utm_source is None


def test_visit_full_body() -> None:
    body = {
        "tempId": UUID,
        "clientSessionId": "sess-1",
        "externalUserId": "user-9",
        "href": HREF,
        "landingPage": "https://yoursite.com/",
        "referrer": "https://www.facebook.com/",
        "clientIp": "203.0.113.42",
        "userAgent": "Mozilla/5.0",
        "country": "DE",
        "city": "Berlin",
        "region": "BE",
        "fbc": "fb.1.1700000000.AbCd",
        "fbp": "fb.1.1700000000.123",
        "gclid": "g",
        "ttclid": "t",
        "sccid": "s",
        "utmSource": "fb",
        "utmMedium": "cpc",
        "utmCampaign": "c",
        "utmContent": "ct",
        "utmTerm": "tm",
    }
    assert parse_visit(body, now_ms=NOW_MS) == VisitInput(
        temp_id=UUID_LOWER,
        client_session_id="sess-1",
        external_user_id="user-9",
        href=HREF,
        landing_page="https://yoursite.com/",
        referrer="https://www.facebook.com/",
        client_ip="203.0.113.42",
        user_agent="Mozilla/5.0",
        country="DE",
        city="Berlin",
        region="BE",
        fbc="fb.1.1700000000.AbCd",
        fbp="fb.1.1700000000.123",
        gclid="g",
        ttclid="t",
        sccid="s",
        utm_source="fb",
        utm_medium="cpc",
        utm_campaign="c",
        utm_content="ct",
        utm_term="tm",
    )


# --- parse_visit: tempId and clientIp ---------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        UUID,
        UUID_LOWER,
        f" {UUID}\n",
        "00000000-0000-0000-0000-000000000000",
        "0190a7c4-5f3e-7d4a-8b2c-1d2e3f4a5b6c",
    ],
)
def test_visit_temp_id_canonicalised(value: str) -> None:
    assert visit(tempId=value).temp_id == value.strip().lower()


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "3f2504e04f8941d39a0c0305e82c3301",
        "{3f2504e0-4f89-41d3-9a0c-0305e82c3301}",
        "urn:uuid:3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        "3f2504e0-4f89-41d3-9a0c-0305e82c330",
        "3f2504e0-4f89-41d3-9a0c-0305e82c33011",
        "3g2504e0-4f89-41d3-9a0c-0305e82c3301",
        "３f2504e0-4f89-41d3-9a0c-0305e82c3301",
    ],
)
def test_visit_temp_id_must_be_a_uuid(value: str) -> None:
    with pytest.raises(InputError) as exc:
        visit(tempId=value)
    field_error(exc, "tempId", "must be a UUID")


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("203.0.113.42", "203.0.113.42"),
        (" 2001:DB8:0:0::1 ", "2001:db8::1"),
        ("::ffff:203.0.113.42", "203.0.113.42"),
    ],
)
def test_visit_client_ip(value: str, stored: str) -> None:
    assert visit(clientIp=value).client_ip == stored


@pytest.mark.parametrize("value", ["203.0.113", "example.com", "203.0.113.42:80", "1.2.3.4/32"])
def test_visit_client_ip_invalid(value: str) -> None:
    with pytest.raises(InputError) as exc:
        visit(clientIp=value)
    field_error(exc, "clientIp", "must be an IP address")


# --- parse_visit: values from href's query ----------------------------------


def test_fbc_derived_from_fbclid() -> None:
    v = visit(href="https://yoursite.com/landing?fbclid=AbCd")
    assert v.fbc == f"fb.1.{NOW_MS}.AbCd"


def test_fbc_keeps_fbclid_verbatim() -> None:
    fbclid = "IwAR2xYz-Ab_CdEfGh-IJ_kl-MnOp"
    v = visit(href=f"https://yoursite.com/landing?utm_source=fb&fbclid={fbclid}&x=1")
    assert v.fbc == f"fb.1.{NOW_MS}.{fbclid}"


def test_fbc_fbclid_percent_decoded() -> None:
    v = visit(href="https://yoursite.com/?fbclid=Ab%2DCd%5FEf")
    assert v.fbc == f"fb.1.{NOW_MS}.Ab-Cd_Ef"


def test_fbc_in_body_wins_over_fbclid() -> None:
    v = visit(href="https://yoursite.com/?fbclid=FromUrl", fbc="fb.1.1600000000000.FromBody")
    assert v.fbc == "fb.1.1600000000000.FromBody"


def test_empty_fbc_in_body_falls_back_to_fbclid() -> None:
    v = visit(href="https://yoursite.com/?fbclid=FromUrl", fbc="  ")
    assert v.fbc == f"fb.1.{NOW_MS}.FromUrl"


@pytest.mark.parametrize(
    "href",
    [
        "https://yoursite.com/",
        "https://yoursite.com/?fbclid=",
        "https://yoursite.com/#fbclid=InFragment",
        "https://yoursite.com/?FBCLID=Upper",
        "https://yoursite.com/?fbclid=" + "a" * 1900,
    ],
)
def test_no_fbc_without_usable_fbclid(href: str) -> None:
    assert visit(href=href).fbc is None


def test_fbc_uses_first_fbclid() -> None:
    assert visit(href="https://a.com/?fbclid=One&fbclid=Two").fbc == f"fb.1.{NOW_MS}.One"


def test_utm_and_click_ids_from_href() -> None:
    href = (
        "https://yoursite.com/landing?utm_source=facebook&utm_medium=paid%20social"
        "&utm_campaign=spring+sale&utm_content=ad%2F1&utm_term=join"
        "&gclid=G-1&ttclid=T_1&ScCid=S1"
    )
    v = visit(href=href)
    assert (v.utm_source, v.utm_medium, v.utm_campaign, v.utm_content, v.utm_term) == (
        "facebook",
        "paid social",
        "spring sale",
        "ad/1",
        "join",
    )
    assert (v.gclid, v.ttclid, v.sccid) == ("G-1", "T_1", "S1")


def test_sccid_lower_case_in_href() -> None:
    assert visit(href="https://a.com/?sccid=low").sccid == "low"
    assert visit(href="https://a.com/?sccid=low&ScCid=Up").sccid == "Up"


def test_body_wins_over_href_query() -> None:
    v = visit(
        href="https://a.com/?utm_source=url&utm_term=url-term&gclid=url-g",
        utmSource="body",
        gclid="body-g",
    )
    assert (v.utm_source, v.utm_term, v.gclid) == ("body", "url-term", "body-g")


def test_overlong_href_values_are_dropped() -> None:
    v = visit(href="https://a.com/?utm_source=" + "s" * 300 + "&utm_medium=m")
    assert (v.utm_source, v.utm_medium) == (None, "m")


def test_body_values_are_still_capped_when_href_has_them() -> None:
    with pytest.raises(InputError) as exc:
        visit(href="https://a.com/?utm_source=ok", utmSource="s" * 257)
    field_error(exc, "utmSource", "longer than 256 characters")


# --- parse_update_fbp -------------------------------------------------------


def test_update_fbp() -> None:
    assert parse_update_fbp({"tempId": UUID, "fbp": " fb.1.1.2 "}) == (UUID_LOWER, "fb.1.1.2")


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({"fbp": "fb.1.1.2"}, "tempId", "required"),
        ({"tempId": "", "fbp": "fb.1.1.2"}, "tempId", "required"),
        ({"tempId": "nope", "fbp": "fb.1.1.2"}, "tempId", "must be a UUID"),
        ({"tempId": 7, "fbp": "fb.1.1.2"}, "tempId", "must be a string"),
        ({"tempId": UUID}, "fbp", "required"),
        ({"tempId": UUID, "fbp": None}, "fbp", "required"),
        ({"tempId": UUID, "fbp": "  "}, "fbp", "required"),
        ({"tempId": UUID, "fbp": 12}, "fbp", "must be a string"),
        ({"tempId": UUID, "fbp": "x" * 513}, "fbp", "longer than 512 characters"),
    ],
)
def test_update_fbp_errors(body: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_update_fbp(body)
    field_error(exc, field, why)


# --- parse_invite -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"channelId": "-1001234567890"}, (None, None, "-1001234567890")),
        ({"channelId": -1001234567890}, (None, None, "-1001234567890")),
        ({"channelId": 0}, (None, None, "0")),
        ({"channelId": " ch_1 "}, (None, None, "ch_1")),
        (
            {"tempId": UUID, "clientSessionId": "s1", "channelId": "c"},
            (UUID_LOWER, "s1", "c"),
        ),
        ({"tempId": None, "clientSessionId": "", "channelId": "c"}, (None, None, "c")),
    ],
)
def test_invite(body: dict[str, Any], expected: tuple[str | None, str | None, str]) -> None:
    assert parse_invite(body) == expected


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({}, "channelId", "required"),
        ({"channelId": None}, "channelId", "required"),
        ({"channelId": " "}, "channelId", "required"),
        ({"channelId": True}, "channelId", "must be a string or an integer"),
        ({"channelId": 1.5}, "channelId", "must be a string or an integer"),
        ({"channelId": -1001234567890.0}, "channelId", "must be a string or an integer"),
        ({"channelId": ["c"]}, "channelId", "must be a string or an integer"),
        ({"channelId": "c" * 129}, "channelId", "longer than 128 characters"),
        ({"channelId": 10**129}, "channelId", "longer than 128 characters"),
        ({"channelId": 10**5000}, "channelId", "longer than 128 characters"),
        ({"channelId": "c", "tempId": "x"}, "tempId", "must be a UUID"),
        ({"channelId": "c", "tempId": 1}, "tempId", "must be a string"),
        ({"channelId": "c", "clientSessionId": 1}, "clientSessionId", "must be a string"),
        (
            {"channelId": "c", "clientSessionId": "s" * 513},
            "clientSessionId",
            "longer than 512 characters",
        ),
    ],
)
def test_invite_errors(body: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_invite(body)
    field_error(exc, field, why)


@pytest.mark.parametrize(
    ("given", "read"),
    [
        (2**63 - 1, str(2**63 - 1)),
        (-(2**63), str(-(2**63))),
        ("-1001234567890", "-1001234567890"),
        ("@joinbridge_news", "@joinbridge_news"),
        ("ch_1", "ch_1"),
        ("c" * 64, "c" * 64),
        ("01HXYZ-abc_9", "01HXYZ-abc_9"),
    ],
)
def test_invite_channel_id_forms(given: object, read: str) -> None:
    assert parse_invite({"channelId": given})[2] == read


@pytest.mark.parametrize(
    ("given", "why"),
    [
        (2**63, "outside the range of Telegram ids"),
        (-(2**63) - 1, "outside the range of Telegram ids"),
        (str(10**19), "outside the range of Telegram ids"),
        (10**127, "outside the range of Telegram ids"),
        ("--5", "must be a -100… Telegram id"),
        ("²", "must be a -100… Telegram id"),
        ("٣٤", "must be a -100… Telegram id"),
        ("c" * 65, "must be a -100… Telegram id"),
        ("ch 1", "must be a -100… Telegram id"),
        ("-ch", "must be a -100… Telegram id"),
        ("@ab", "not a Telegram @username"),
        ("@bad-name", "not a Telegram @username"),
    ],
)
def test_invite_channel_id_refused(given: object, why: str) -> None:
    with pytest.raises(InputError, match="channelId") as caught:
        parse_invite({"channelId": given})
    assert why in str(caught.value)


def test_invite_from_json_body() -> None:
    body = parse_json_object(json.dumps({"channelId": -100123}).encode(), "application/json")
    assert parse_invite(body) == (None, None, "-100123")


# --- visit_from_query -------------------------------------------------------


def test_visit_from_query() -> None:
    query = {
        "channel": "-100123",
        "fbclid": "Ab-Cd_Ef",
        "gclid": "g",
        "ttclid": "t",
        "ScCid": "s",
        "utm_source": "fb",
        "utm_medium": " cpc ",
        "utm_campaign": "",
    }
    v = visit_from_query(query, href=HREF, referrer=None, now_ms=NOW_MS)
    assert v.href == HREF
    assert v.fbc == f"fb.1.{NOW_MS}.Ab-Cd_Ef"
    assert (v.gclid, v.ttclid, v.sccid) == ("g", "t", "s")
    assert (v.utm_source, v.utm_medium, v.utm_campaign) == ("fb", "cpc", None)
    assert (v.temp_id, v.client_session_id, v.referrer, v.client_ip, v.user_agent) == (
        None,
        None,
        None,
        None,
        None,
    )


def test_visit_from_query_falls_back_to_href_query() -> None:
    href = "https://yoursite.com/l?fbclid=FromPage&utm_source=page&utm_term=t"
    v = visit_from_query({"utm_source": "link"}, href=href, referrer=None, now_ms=NOW_MS)
    assert v.fbc == f"fb.1.{NOW_MS}.FromPage"
    assert (v.utm_source, v.utm_term) == ("link", "t")


def test_visit_from_query_query_fbclid_wins() -> None:
    href = "https://yoursite.com/l?fbclid=FromPage"
    v = visit_from_query({"fbclid": "FromLink"}, href=href, referrer=None, now_ms=NOW_MS)
    assert v.fbc == f"fb.1.{NOW_MS}.FromLink"


def test_visit_from_query_keeps_referrer() -> None:
    v = visit_from_query({}, href=HREF, referrer=" https://t.co/ ", now_ms=NOW_MS)
    assert v.referrer == "https://t.co/"


def test_visit_from_query_requires_href() -> None:
    with pytest.raises(InputError) as exc:
        visit_from_query({"fbclid": "x"}, href=None, referrer=None, now_ms=NOW_MS)
    field_error(exc, "href", "required")


def test_visit_from_query_validates_href() -> None:
    with pytest.raises(InputError) as exc:
        visit_from_query({}, href="android-app://org.telegram/", referrer=None, now_ms=NOW_MS)
    field_error(exc, "href", "must be an absolute http(s) URL")


def test_visit_from_query_drops_overlong_values() -> None:
    query = {"gclid": "g" * 513, "utm_source": "s" * 257, "fbclid": "f" * 500}
    v = visit_from_query(query, href=HREF, referrer=None, now_ms=NOW_MS)
    assert (v.gclid, v.utm_source, v.fbc) == (None, None, None)


# --- resolve_client ---------------------------------------------------------

TRUSTED = parse_trusted_proxies("10.0.0.0/8, 127.0.0.1, fd00::/8")


def client(**kwargs: Any) -> tuple[str | None, str | None]:
    args: dict[str, Any] = {
        "header_ip": None,
        "header_ua": None,
        "body_ip": None,
        "body_ua": None,
        "peer_ip": None,
        "forwarded_for": None,
        "request_ua": None,
        "trusted_proxies": TRUSTED,
        "server_side": True,
    }
    args.update(kwargs)
    return resolve_client(**args)


def test_only_a_server_side_caller_names_the_visitor() -> None:
    named = {
        "header_ip": "198.51.100.1",
        "header_ua": "HeaderUA",
        "body_ip": "198.51.100.2",
        "body_ua": "BodyUA",
        "peer_ip": "198.51.100.3",
        "request_ua": "RequestUA",
    }
    assert client(**named, server_side=False) == ("198.51.100.3", "RequestUA")
    assert client(**named, server_side=True) == ("198.51.100.1", "HeaderUA")
    # Behind a trusted proxy the browser's hop is the address, whatever it claims.
    behind = {**named, "peer_ip": "10.0.0.1", "forwarded_for": "203.0.113.9"}
    assert client(**behind, server_side=False) == ("203.0.113.9", "RequestUA")


def test_headers_win_over_body_and_request() -> None:
    assert client(
        header_ip="198.51.100.1",
        header_ua="HeaderUA",
        body_ip="198.51.100.2",
        body_ua="BodyUA",
        peer_ip="198.51.100.3",
        request_ua="RequestUA",
    ) == ("198.51.100.1", "HeaderUA")


def test_body_wins_over_request() -> None:
    assert client(
        body_ip="198.51.100.2",
        body_ua="BodyUA",
        peer_ip="198.51.100.3",
        request_ua="RequestUA",
    ) == ("198.51.100.2", "BodyUA")


def test_request_used_last() -> None:
    assert client(peer_ip="198.51.100.3", request_ua="RequestUA") == (
        "198.51.100.3",
        "RequestUA",
    )


def test_ip_and_ua_resolved_independently() -> None:
    assert client(
        header_ip="198.51.100.1", body_ua="BodyUA", peer_ip="198.51.100.3", request_ua="R"
    ) == ("198.51.100.1", "BodyUA")
    assert client(header_ua="HeaderUA", body_ip="198.51.100.2", peer_ip="198.51.100.3") == (
        "198.51.100.2",
        "HeaderUA",
    )


@pytest.mark.parametrize("bad", ["", "  ", "not-an-ip", "198.51.100.1, 198.51.100.9", "1.2.3"])
def test_invalid_header_ip_falls_through(bad: str) -> None:
    assert client(header_ip=bad, body_ip="198.51.100.2", peer_ip="198.51.100.3")[0] == (
        "198.51.100.2"
    )
    assert client(header_ip=bad, body_ip=bad, peer_ip="198.51.100.3")[0] == "198.51.100.3"


def test_blank_user_agents_fall_through() -> None:
    assert client(header_ua="  ", body_ua="", request_ua=" R ")[1] == "R"
    assert client()[1] is None


def test_user_agent_capped() -> None:
    assert client(header_ua="u" * 5000)[1] == "u" * 1024
    assert client(request_ua="r" * 1025)[1] == "r" * 1024


def test_nothing_known() -> None:
    assert client() == (None, None)
    assert client(peer_ip="garbage") == (None, None)


def test_ipv4_mapped_peer_unwrapped() -> None:
    assert client(peer_ip="::ffff:198.51.100.3")[0] == "198.51.100.3"
    # and matched against IPv4 trusted networks
    mapped_proxy = client(peer_ip="::ffff:10.0.0.5", forwarded_for="198.51.100.7")
    assert mapped_proxy[0] == "198.51.100.7"


def test_xff_ignored_from_untrusted_peer() -> None:
    assert client(peer_ip="198.51.100.3", forwarded_for="203.0.113.9")[0] == "198.51.100.3"


def test_xff_honoured_from_trusted_peer() -> None:
    assert client(peer_ip="10.1.2.3", forwarded_for="203.0.113.9")[0] == "203.0.113.9"
    assert client(peer_ip="127.0.0.1", forwarded_for="203.0.113.9")[0] == "203.0.113.9"


def test_xff_spoofed_leftmost_entries_ignored() -> None:
    ip, _ = client(peer_ip="10.0.0.1", forwarded_for="1.1.1.1, 8.8.8.8, 203.0.113.9")
    assert ip == "203.0.113.9"


def test_xff_walks_past_trusted_hops() -> None:
    ip, _ = client(
        peer_ip="10.0.0.1", forwarded_for="1.1.1.1, 203.0.113.9, 10.0.0.2,127.0.0.1 , 10.9.9.9"
    )
    assert ip == "203.0.113.9"


def test_xff_multiple_headers_joined() -> None:
    joined = ",".join(["6.6.6.6", "203.0.113.9, 10.0.0.2"])
    assert client(peer_ip="10.0.0.1", forwarded_for=joined)[0] == "203.0.113.9"


def test_xff_all_trusted_gives_leftmost() -> None:
    assert client(peer_ip="10.0.0.1", forwarded_for="10.0.0.3, 10.0.0.2")[0] == "10.0.0.3"


def test_xff_empty_from_trusted_peer_gives_peer() -> None:
    assert client(peer_ip="10.0.0.1", forwarded_for="")[0] == "10.0.0.1"
    assert client(peer_ip="10.0.0.1", forwarded_for=" , ")[0] == "10.0.0.1"


def test_xff_invalid_entry_stops_walk() -> None:
    ip, _ = client(peer_ip="10.0.0.1", forwarded_for="203.0.113.9, unknown, 10.0.0.2")
    assert ip == "10.0.0.2"
    ip, _ = client(peer_ip="10.0.0.1", forwarded_for="203.0.113.9, garbage")
    assert ip == "10.0.0.1"


def test_xff_entries_with_ports_and_ipv6() -> None:
    assert client(peer_ip="10.0.0.1", forwarded_for="203.0.113.9:5555")[0] == "203.0.113.9"
    assert client(peer_ip="fd00::1", forwarded_for="[2001:db8::7]:443")[0] == "2001:db8::7"
    assert client(peer_ip="fd00::1", forwarded_for="2001:DB8::7")[0] == "2001:db8::7"


def test_xff_ignored_when_no_trusted_proxies() -> None:
    assert client(peer_ip="10.0.0.1", forwarded_for="203.0.113.9", trusted_proxies=[])[0] == (
        "10.0.0.1"
    )


def test_headers_still_win_over_xff() -> None:
    ip, _ = client(header_ip="198.51.100.1", peer_ip="10.0.0.1", forwarded_for="203.0.113.9")
    assert ip == "198.51.100.1"


# --- parse_trusted_proxies --------------------------------------------------


def test_parse_trusted_proxies() -> None:
    assert parse_trusted_proxies("10.0.0.0/8, 127.0.0.1 ,::1,\n192.168.1.7/24") == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.0/24"),
    ]


@pytest.mark.parametrize("text", ["", "  ", ",", " , "])
def test_parse_trusted_proxies_empty(text: str) -> None:
    assert parse_trusted_proxies(text) == []


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "300.1.1.1", "10.0.0.0/x"])
def test_parse_trusted_proxies_names_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")) as exc:
        parse_trusted_proxies(f"127.0.0.1, {bad}")
    assert not isinstance(exc.value, InputError)


@pytest.mark.parametrize("user_agent", ["Mozilla\x00", "A\r\nX-Evil: 1", "Mozilla é", "\x7f"])
def test_a_user_agent_that_cannot_be_a_header_is_refused_from_the_body(user_agent: str) -> None:
    with pytest.raises(InputError, match="userAgent: must be printable ASCII"):
        parse_visit({"href": "https://a.example/", "userAgent": user_agent}, now_ms=NOW_MS)


def test_a_user_agent_that_cannot_be_a_header_falls_through() -> None:
    assert client(header_ua="bad\x01", body_ua="Mozilla é", request_ua="Real/1.0")[1] == (
        "Real/1.0"
    )
    assert client(request_ua="Mozilla é")[1] is None
