"""A PostgreSQL URL (DATABASE_URL, migrate-to-postgres' target) as the tools show
it: checked the way libpq will read it, and printed with its password masked."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

MASK = "***"
SCHEMES = ("postgresql", "postgres")
EXAMPLE = "postgresql://user:password@host:5432/database"


def check(url: str) -> dict[str, str]:
    """libpq's reading of `url` (host, port, dbname, …); ValueError saying what is
    wrong, never echoing the password."""
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES or not rest:
        raise ValueError(f"not a PostgreSQL URL (it must look like {EXAMPLE})")
    try:
        parts = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except psycopg.ProgrammingError as error:
        raise ValueError(scrub(str(error).strip(), url)) from None
    for port in parts.get("port", "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"the port {port!r} is not a number from 1 to 65535")
    return parts


def passwords(url: str) -> list[str]:
    """The passwords in `url`: in its user part and in a `password=` parameter."""
    found: list[str] = []
    with contextlib.suppress(psycopg.ProgrammingError):
        found.append(str(conninfo_to_dict(url).get("password") or ""))
    # Read by hand too: libpq may not have parsed the URL, and a parameter wins over
    # the user part, which is then still in the text.
    match = re.match(r"^[a-z]+://[^/@:]*:([^/@]*)@", url)
    if match:
        found.append(unquote(match.group(1)))
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def masked(url: str) -> str:
    """`url` with its password replaced by ***, fit to print and log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url, url)
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(key, MASK if key == "password" else value) for key, value in pairs],
            safe="*/:,",
            quote_via=quote,
        )
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), url)


def scrub(text: str, url: str) -> str:
    """`text` (an error message, say) without the passwords of `url` in it."""
    for secret in passwords(url):
        text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
    return text


def with_connect_timeout(url: str, seconds: int) -> str:
    """`url` with libpq's connect_timeout (whole seconds) unless it sets one: without
    it, a host that drops packets is waited for as long as TCP retries."""
    if "connect_timeout=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}connect_timeout={int(seconds)}"
