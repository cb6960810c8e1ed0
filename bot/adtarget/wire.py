"""Where each AdTarget call goes and the headers that carry the real visitor,
defined once: the client sends to these paths, the outbox writers (visits,
joins, follow-ups) store them, and the tracker serves the same contract locally.

Paths are relative to API_PREFIX (/work/shared/adtarget-api.md, "Endpoints").
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

API_PREFIX = "/api/v1"
VISIT_PATH = "/events/visit"
UPDATE_FBP_PATH = "/events/update-fbp"
INVITE_PATH = "/events/invite"
CONVERSION_PATH = "/events/conversion"
CHANNELS_PATH = "/channels"

# AdTarget's forwarding headers ("Forwarding the real visitor"): they win over
# the body's clientIp / userAgent.
CLIENT_IP_HEADER = "X-Adtarget-Client-IP"
CLIENT_UA_HEADER = "X-Adtarget-Client-User-Agent"

_VALUE_PATH = re.compile(r"/leads/(\d+)/conversions/([^/]+)/value$")


def lead_path(telegram_user_id: int) -> str:
    return f"/leads/{telegram_user_id}"


def lead_events_path(telegram_user_id: int) -> str:
    return f"/leads/{telegram_user_id}/events"


def conversion_value_path(telegram_user_id: int, conversion_id: str) -> str:
    # The id is AdTarget's; quoted so that a stray "/" cannot change the route.
    return f"/leads/{telegram_user_id}/conversions/{quote(conversion_id, safe='')}/value"


def value_path_conversion(path: str) -> str | None:
    """The conversion id a `conversion_value_path` names, unquoted; None for another path."""
    match = _VALUE_PATH.search(path)
    return unquote(match.group(2)) if match else None


def visitor_headers(
    body: dict[str, Any], client_ip: str | None, user_agent: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Move the real visitor's IP and User-Agent into AdTarget's forwarding headers.

    AdTarget lets the headers win over the body's clientIp / userAgent, so an
    explicit `client_ip` / `user_agent` wins over the body here too; what is
    sent is then one unambiguous value per field, in the header.
    """
    body = dict(body)
    body_ip, body_agent = body.pop("clientIp", None), body.pop("userAgent", None)
    headers = {}
    if ip := client_ip or body_ip:
        headers[CLIENT_IP_HEADER] = str(ip)
    if agent := user_agent or body_agent:
        headers[CLIENT_UA_HEADER] = str(agent)
    return body, headers
