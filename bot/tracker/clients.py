"""Who sent a tracker request: one rule for attribution, the rate limit, quotas and logs.

- The client's address is the TCP peer. When the peer is a trusted proxy
  (TRUSTED_PROXIES, loopback by default: a peer on the same host is a proxy or
  the landing page's own server), it is the nearest untrusted hop of
  X-Forwarded-For, read from all of its lines.
- A *server-side caller* forwards visitors (AdTarget's proxy contract): it is a
  request bearing TRACKER_TOKEN, or, when no token is configured, a trusted peer
  that sent no X-Forwarded-For (a proxy always adds one, so a browser behind it
  cannot pass for its server). Only a server-side caller's X-Adtarget-Client-*
  headers and body clientIp / userAgent are believed; from anyone else they are
  ignored, so a browser cannot forge its address by header or by body.
- The rate limit keys on that client: the visitor a server-side caller names,
  else the address above. No peer escapes it, or spends another client's
  allowance, by naming an address.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from bot.adtarget.wire import CLIENT_IP_HEADER, CLIENT_UA_HEADER
from bot.settings import IPNetwork
from bot.token_bucket import TokenBucket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UA_MAX = 1024  # a User-Agent longer than this is cut

# An IPv6 client commonly holds a whole /64: one bucket for it, or it could
# rotate addresses past the limit (and through the limiter's memory).
_IPV6_PREFIX = 64


@dataclass(frozen=True, slots=True)
class Client:
    ip: str | None  # the visitor's address
    user_agent: str | None
    server_side: bool  # its X-Adtarget-Client-* headers and body fields are believed

    @property
    def key(self) -> str:
        """The rate limit's and the quotas' key for this client."""
        return rate_key(self.ip)


def rate_key(ip: str | None) -> str:
    address = ip_address_or_none(ip)
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/{_IPV6_PREFIX}", strict=False))
    return str(address)


def bears_token(request: web.Request, token: str | None) -> bool:
    """The request carries `token` as its bearer token (constant-time)."""
    if not token:
        return False
    given = request.headers.get("Authorization", "")
    # Headers were checked as valid text (tracker._headers): encode cannot fail.
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def forwarded_for(request: web.Request) -> str:
    """Every X-Forwarded-For line, joined: a proxy may add a line of its own."""
    return ",".join(request.headers.getall("X-Forwarded-For", ()))


def is_server_side(request: web.Request, token: str | None, trusted: tuple[IPNetwork, ...]) -> bool:
    if token:
        return bears_token(request, token)
    peer = request.remote
    return (
        peer is not None and in_networks(peer, trusted) and "X-Forwarded-For" not in request.headers
    )


def identify(
    request: web.Request,
    trusted: tuple[IPNetwork, ...],
    *,
    server_side: bool,
    body_ip: str | None = None,
    body_ua: str | None = None,
) -> Client:
    """The client, `server_side` as is_server_side found it (the caller reads a
    server-side caller's body for the visitor it names)."""
    ip, user_agent = resolve_client(
        header_ip=request.headers.get(CLIENT_IP_HEADER),
        header_ua=request.headers.get(CLIENT_UA_HEADER),
        body_ip=body_ip,
        body_ua=body_ua,
        peer_ip=request.remote,
        forwarded_for=forwarded_for(request),
        request_ua=request.headers.get("User-Agent"),
        trusted_proxies=trusted,
        server_side=server_side,
    )
    return Client(ip, user_agent, server_side)


def is_local(request: web.Request, trusted: tuple[IPNetwork, ...]) -> bool:
    """A client on this host that the operator trusts: a loopback address in
    TRUSTED_PROXIES once X-Forwarded-For is resolved, so a request a local proxy
    forwarded from outside is not local (nor, with TRUSTED_PROXIES=127.0.0.1, a
    container or user that reaches the tracker from another loopback address)."""
    ip, _ = resolve_client(
        header_ip=None,
        header_ua=None,
        body_ip=None,
        body_ua=None,
        peer_ip=request.remote,
        forwarded_for=forwarded_for(request),
        request_ua=None,
        trusted_proxies=trusted,
        server_side=False,
    )
    return ip is not None and ipaddress.ip_address(ip).is_loopback and in_networks(ip, trusted)


def in_networks(ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    address = ip_address_or_none(ip)
    return address is not None and _trusted(address, networks)


class ClientRateLimiter:
    """A token bucket per client key, in bounded memory: past `max_clients` the
    least recently seen buckets are forgotten (a forgotten client starts again
    with a full bucket, which bounds memory without letting anyone past the rate
    for long: an attacker would need `max_clients` fresh keys per refill)."""

    def __init__(self, rate_per_minute: float, burst: int, max_clients: int = 50_000) -> None:
        self._rate = rate_per_minute / 60.0
        self._burst = burst
        self._max_clients = max_clients
        # Least recently seen first.
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


def resolve_client(
    *,
    header_ip: str | None,
    header_ua: str | None,
    body_ip: str | None,
    body_ua: str | None,
    peer_ip: str | None,
    forwarded_for: str | None,
    request_ua: str | None,
    trusted_proxies: Sequence[IPNetwork],
    server_side: bool,
) -> tuple[str | None, str | None]:
    """The visitor's (IP, User-Agent).

    A server-side caller (see bot/tracker/clients.py) forwards visitors, so its
    X-Adtarget-Client-* headers, else the body's clientIp / userAgent, name the
    visitor; each is taken independently and invalid IPs fall through to the
    request itself. From anyone else they are ignored: a browser could name any
    address. The request's own address is the peer, or behind trusted proxies the
    nearest untrusted X-Forwarded-For hop (`forwarded_for`: every X-Forwarded-For
    header joined with ",")."""
    if not server_side:
        header_ip = body_ip = header_ua = body_ua = None
    address = ip_address_or_none(header_ip)
    if address is None:
        address = ip_address_or_none(body_ip)
    if address is None:
        address = _request_ip(peer_ip, forwarded_for, trusted_proxies)
    user_agent = None
    for candidate in (header_ua, body_ua, request_ua):
        # Sent on to AdTarget as a header: only printable ASCII can be. Like an
        # invalid IP, anything else falls through to the next source.
        if candidate is not None and candidate.strip() and header_text(candidate):
            user_agent = candidate.strip()[:UA_MAX]
            break
    return (None if address is None else str(address)), user_agent


def header_text(text: str) -> bool:
    """Printable ASCII (and spaces): what may be sent on as an HTTP header value."""
    return text.isascii() and text.replace("\t", " ").isprintable()


def ip_address_or_none(text: str | None) -> IPAddress | None:
    """A plain IP address (IPv4-mapped IPv6 unwrapped), or None when absent or invalid."""
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_ip(entry: str) -> IPAddress | None:
    """One X-Forwarded-For entry; tolerates "1.2.3.4:port" and "[v6]:port"."""
    entry = entry.strip()
    address = ip_address_or_none(entry)
    if address is None and entry.startswith("[") and "]" in entry:
        address = ip_address_or_none(entry[1 : entry.index("]")])
    elif address is None and entry.count(":") == 1:
        address = ip_address_or_none(entry.split(":", 1)[0])
    return address


def _trusted(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def _request_ip(
    peer_ip: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The peer, or when the peer is a trusted proxy the right-most X-Forwarded-For
    entry that is not itself trusted. Entries left of it are client-controlled and
    ignored. An unparsable entry stops the walk at the last address known good."""
    client = ip_address_or_none(peer_ip)
    if client is None or not forwarded_for or not _trusted(client, trusted):
        return client
    for entry in reversed(forwarded_for.split(",")):
        if not entry.strip():
            continue
        address = _forwarded_ip(entry)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return client
