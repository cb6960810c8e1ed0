"""What the AdTarget simulator (bot/simulators/adtarget.py) stores, and its endpoints.

Visits, leads with their conversions, follow-up events and values, as
/work/shared/adtarget-api.md describes them. Each endpoint is synchronous, so
check-and-store cannot interleave, and takes the parsed call and returns the
answer; the server around it does auth, faults, rate limit and idempotency.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.adtarget.wire import CLIENT_IP_HEADER, CLIENT_UA_HEADER

from . import adtarget_rules as rules


class ErrorAnswer(Exception):
    """An answer in AdTarget's error envelope: {"error": {"code", "message"}}."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.answer = Answer(status, json.dumps({"error": {"code": code, "message": message}}))
        self.answer.headers.update(headers or {})


@dataclass
class Answer:
    status: int
    text: str  # JSON text: a stored idempotent answer is replayed byte for byte
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ApiCall:
    body: dict[str, Any]
    params: tuple[str, ...]
    request: web.Request
    idempotency_key: str | None


def _new_id() -> str:
    return str(uuid.uuid4())


def _ok(payload: dict[str, Any]) -> Answer:
    return Answer(200, json.dumps(payload))


class AdTargetStore:
    def __init__(self, channels: list[dict[str, Any]] | None = None) -> None:
        self.conversions: list[dict[str, Any]] = []
        self.visits: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.values: list[dict[str, Any]] = []
        self._channels = json.loads(json.dumps(channels)) if channels is not None else None
        self._leads: dict[int, dict[str, Any]] = {}
        # (user, channel) whose conversions carry an attribution signal: a warm
        # lead's later conversions inherit it.
        self._signalled: set[tuple[int, str]] = set()
        self._sessions: dict[str, str] = {}  # clientSessionId -> sessionId
        self._conversion_added = asyncio.Event()

    # ---- domain helpers --------------------------------------------------

    def _channel(self, channel_id: str) -> str:
        """The canonical (internal) channelId for an internal or Telegram (-100…) id."""
        if self._channels is None:
            return channel_id
        for channel in self._channels:
            if channel_id in (str(channel.get("channelId")), str(channel.get("telegramChannelId"))):
                return str(channel["channelId"])
        raise ErrorAnswer(
            404, "CHANNEL_NOT_FOUND", f"channelId {channel_id!r} is not assigned to this site"
        )

    def _lead(self, user: int) -> dict[str, Any]:
        lead = self._leads.get(user)
        if lead is None:
            raise ErrorAnswer(404, "LEAD_NOT_FOUND", f"no conversion for telegramUserId {user}")
        return lead

    def _record(
        self, user: int, channel: str, body: dict[str, Any]
    ) -> tuple[Answer, dict[str, str]]:
        """Store a conversion on the lead; returns (answer, {conversionId, createdAt})."""
        now = rules.now_ms()
        stamp = rules.iso_ms(now)
        lead = self._leads.setdefault(
            user, {"telegramUserId": user, "firstSeenAt": stamp, "conversions": []}
        )
        cold = not any(c["channelId"] == channel for c in lead["conversions"])
        lead["lastSeenAt"] = stamp
        if "externalUserId" in body:
            lead["externalUserId"] = body["externalUserId"]
        inherited = (user, channel) in self._signalled
        entry, answer = rules.conversion(body, channel, cold, now, inherited_signal=inherited)
        if rules.has_signal(body):
            self._signalled.add((user, channel))
        lead["conversions"].append(entry)
        return _ok(answer), {"conversionId": entry["conversionId"], "createdAt": stamp}

    # ---- endpoints (synchronous: check-and-store cannot interleave) -----

    def _visit(self, call: ApiCall) -> Answer:
        body = call.body
        rules.check_visit(body)
        headers = call.request.headers
        # Headers win over body; with neither, AdTarget only sees the caller itself.
        ip = headers.get(CLIENT_IP_HEADER) or body.get("clientIp") or call.request.remote
        user_agent = (
            headers.get(CLIENT_UA_HEADER) or body.get("userAgent") or headers.get("User-Agent")
        )
        temp_id = body.get("tempId") or _new_id()
        client_session = body.get("clientSessionId") or _new_id()
        session_id = self._sessions.setdefault(client_session, _new_id())
        ids = {"visitId": _new_id(), "sessionId": session_id, "tempId": temp_id}
        ids["clientSessionId"] = client_session
        landing = body.get("landingPage") or rules.landing_page(body["href"])
        self.visits.append(
            {**body, "clientIp": ip, "userAgent": user_agent, "landingPage": landing, **ids}
        )
        # The session cookie carries clientSessionId: the browser echoes it on later calls.
        cookies = {
            "tempId": rules.cookie("adtarget_temp_id", temp_id, 31536000),
            "session": rules.cookie("adtarget_session_id", client_session, 1800),
        }
        return _ok({**ids, "cookies": cookies})

    def _update_fbp(self, call: ApiCall) -> Answer:
        rules.check_update_fbp(call.body)
        for visit in reversed(self.visits):  # the latest visit of that tempId
            if visit["tempId"] == call.body["tempId"]:
                visit["fbp"] = call.body["fbp"]
                return _ok({"success": True})
        return _ok({"success": False})

    def _invite(self, call: ApiCall) -> Answer:
        rules.check_invite(call.body)
        self._channel(call.body["channelId"])
        return _ok({"inviteLink": f"https://t.me/+fake{secrets.token_urlsafe(12)}"})

    def _conversion(self, call: ApiCall) -> Answer:
        body = call.body
        rules.check_conversion(body)
        user = body["telegramUserId"]
        answer, ids = self._record(user, self._channel(body["channelId"]), body)
        self.conversions.append({**body, **ids, "idempotencyKey": call.idempotency_key})
        self._conversion_added.set()
        return answer

    def _lead_event(self, call: ApiCall) -> Answer:
        user = rules.user_id(call.params[0])
        body = call.body
        rules.check_conversion(body, lead_event=True)
        lead = self._lead(user)
        if "channelId" in body:
            channel = self._channel(body["channelId"])
        else:
            channel = lead["conversions"][-1]["channelId"]
        answer, ids = self._record(user, channel, body)
        record = {"channelId": channel, **body, "telegramUserId": user, **ids}
        self.events.append(record | {"idempotencyKey": call.idempotency_key})
        return answer

    def _value(self, call: ApiCall) -> Answer:
        user, conversion_id = rules.user_id(call.params[0]), call.params[1]
        rules.check_value(call.body)
        lead = self._lead(user)
        for entry in lead["conversions"]:
            if entry["conversionId"] == conversion_id:
                entry["eventValue"] = call.body["value"]
                entry["eventCurrency"] = call.body["currency"]
                self.values.append(
                    {**call.body, "telegramUserId": user, "conversionId": conversion_id}
                )
                return _ok({"success": True})
        raise ErrorAnswer(
            404, "CONVERSION_NOT_FOUND", f"no conversion {conversion_id!r} for {user}"
        )

    def _get_lead(self, call: ApiCall) -> Answer:
        lead = self._lead(rules.user_id(call.params[0]))
        order = ("telegramUserId", "firstSeenAt", "lastSeenAt", "externalUserId", "conversions")
        return _ok({k: lead[k] for k in order if k in lead})

    def _list_channels(self, call: ApiCall) -> Answer:
        return _ok({"channels": self._channels or []})
