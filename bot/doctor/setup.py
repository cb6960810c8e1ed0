"""The doctor's checks of what the owner chose: settings that are legal but break
a deploy (where the landing page's button points, who gets the alerts, which
proxies are believed), and each tracked channel's join event as the database
holds it. They read the settings and the channel rows only; nothing is asked of
Telegram or AdTarget here."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from bot.adtarget.events import STANDARD_EVENTS, EventType, effective_event, refusal
from bot.doctor.checklist import Check, ok, warn
from bot.doctor.telegram import channel_label
from bot.settings import IPNetwork, Settings
from storage.channels import Channel

PUBLIC_URL = "public tracker URL"
ADMINS = "admins"
PROXIES = "trusted proxies"
# A network at least this wide (an IPv4 /7, an IPv6 /15 or wider) is no proxy
# fleet: it takes in a good part of the internet, so any client may be in it.
_WIDEST_PROXY_PREFIX = {4: 8, 6: 16}
_EVENTS = f"{', '.join(e for e in STANDARD_EVENTS if e != 'Purchase')} or Custom:Name"


def settings_checks(settings: Settings) -> list[Check]:
    return [public_url(settings), admins(settings), trusted_proxies(settings)]


def public_url(settings: Settings) -> Check:
    """Where the snippet the bot hands out sends the landing page's visitors."""
    url = settings.public_tracker_url
    fix = (
        "set TRACKER_PUBLIC_URL to the public https URL your reverse proxy (nginx) serves the"
        " tracker at, like https://track.example.com."
    )
    if settings.tracker_public_url is None:
        return warn(
            PUBLIC_URL,
            f"TRACKER_PUBLIC_URL is not set, so the landing snippet's button points at {url},"
            " which no visitor can reach",
            fix,
        )
    parts = urlsplit(url)
    if _this_machine_only(parts.hostname or ""):
        return warn(
            PUBLIC_URL,
            f"TRACKER_PUBLIC_URL {url} is this machine's own address, which no visitor can reach",
            fix,
        )
    if parts.scheme != "https":
        return warn(
            PUBLIC_URL,
            f"TRACKER_PUBLIC_URL {url} is http: a landing page served over https may not call"
            " it (browsers block mixed content)",
            fix,
        )
    return ok(PUBLIC_URL, f"the landing snippet calls {url}")


def _this_machine_only(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def admins(settings: Settings) -> Check:
    if not settings.admin_ids:
        return warn(
            ADMINS,
            "ADMIN_IDS is empty: the bridge's alerts (AdTarget refusing the key, polling"
            " stalled, disk full) go to nobody, and nobody may use /outbox, /sync or /forget",
            "send /start to the bot from your own Telegram account: it answers with your"
            " numeric user id; put it in ADMIN_IDS (several ids: comma-separated).",
        )
    count = len(settings.admin_ids)
    return ok(ADMINS, f"ADMIN_IDS: {count} user(s) get the alerts and the bridge-wide commands")


def too_wide(network: IPNetwork) -> bool:
    """A trusted proxy network so wide that any client may be in it (0.0.0.0/0, ::/0…)."""
    return network.prefixlen < _WIDEST_PROXY_PREFIX[network.version]


def trusted_proxies(settings: Settings) -> Check:
    wide = [str(n) for n in settings.trusted_proxies if too_wide(n)]
    listed = ", ".join(str(n) for n in settings.trusted_proxies) or "none"
    if wide:
        return warn(
            PROXIES,
            f"TRUSTED_PROXIES holds {', '.join(wide)}: any client can forge X-Forwarded-For"
            " (and, without TRACKER_TOKEN, pass as your landing page's server), so the rate"
            " limits and link quotas key on addresses it makes up",
            "list only your reverse proxy's address (127.0.0.1 when nginx runs on this"
            " machine), or leave TRUSTED_PROXIES unset.",
        )
    return ok(PROXIES, f"TRUSTED_PROXIES: {listed}")


def channel_event(channel: Channel, default: EventType) -> Check:
    """What the channel's joins are reported as, and a setting that cannot be used:
    a Purchase without a value (stored before /event required one) or a name
    AdTarget does not know."""
    name = f"{channel_label(channel)} event"
    handle = f"@{channel.username}" if channel.username else str(channel.chat_id)
    reported = effective_event(channel, default)
    for source, text in (("/event", channel.event_type), ("AdTarget", channel.adtarget_event_type)):
        if not text:
            continue
        why = refusal(text, channel)
        if why is None:
            try:
                EventType.parse(text)
            except ValueError as error:
                why = str(error)
        if why is None:
            break  # the one in effect
        return warn(
            name,
            f"{source} set its event to {text}, which cannot be used: {why}; its joins are"
            f" reported as {reported} instead",
            f"/event {handle} Purchase <value> <currency> (like 9.99 EUR), or another event:"
            f" /event {handle} {_EVENTS}.",
        )
    if channel.event_type:
        where = "set with /event"
    elif channel.adtarget_event_type:
        where = "AdTarget's setting"
    else:
        where = "DEFAULT_EVENT_TYPE"
    return ok(name, f"joins are reported as {reported} ({where})")
