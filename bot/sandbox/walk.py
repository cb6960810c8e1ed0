"""The sandbox's walkthrough: one visitor from the ad click to AdTarget's conversion.

The visitor's side is played over HTTP against the bridge's own tracker, as a
landing page would; the join is a chat_member update from the Telegram
simulator with the link the visitor got; the rest is the bridge doing its job,
read back from its database (through storage/) and from what the AdTarget
simulator received.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from bot.adtarget import wire
from bot.sandbox.core import (
    ADTARGET_CHANNEL_ID,
    CHANNEL_ID,
    CHANNEL_TITLE,
    OWNER_ID,
    WAIT,
    Sandbox,
    StepFailed,
    as_seen,
    block,
    mask_key,
    pretty_json,
    say,
    until,
)
from bot.simulators.adtarget import Received
from bot.simulators.telegram import Call
from storage import channels, leads, outbox
from storage.leads import LeadJoin, LeadOutboxRow

FBCLID = "IwAR2sandbox_Zx9"
PAGE = (
    f"https://landing.example/offer?fbclid={FBCLID}"
    "&utm_source=meta&utm_medium=paid&utm_campaign=sandbox"
)
# As a reverse proxy forwards them; a browser calling the tracker directly is
# seen by its own address and User-Agent.
VISITOR_HEADERS = {
    wire.CLIENT_IP_HEADER: "203.0.113.7",
    wire.CLIENT_UA_HEADER: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X)",
}
CONVERSION_PATH = wire.API_PREFIX + wire.CONVERSION_PATH
# The _fbp cookie Meta's pixel set on the page; the script sends it with the visit.
FBP = "fb.1.1764100000000.1357924680"
STEPS = 5


def _step(number: int, title: str) -> None:
    say()
    say(f"[{number}/{STEPS}] {title}")


async def track_channel(sandbox: Sandbox) -> None:
    """The owner makes the bot an admin; the bridge tracks and maps the channel."""
    say()
    say(f"[setup] The channel owner makes the bot an admin of “{CHANNEL_TITLE}” ({CHANNEL_ID}).")
    promoted_at = time.monotonic()
    if sandbox.telegram.bot_status_change(CHANNEL_ID, "administrator", by_user_id=OWNER_ID) is None:
        raise StepFailed("the promotion update was not queued by the Telegram simulator")

    async def tracked() -> bool | None:
        channel = await channels.get(sandbox.bridge.db, CHANNEL_ID)
        return True if channel is not None and channel.active else None

    await until(tracked, "the bridge tracking the channel")
    # What an admin's /sync does: map the channel to AdTarget's id for it.
    mapped, problems = await sandbox.bridge.services.channel_sync.run()
    if not mapped:
        raise StepFailed(f"AdTarget channel mapping: {'; '.join(problems) or 'nothing mapped'}")
    say("        The bridge got the my_chat_member update and tracks the channel; AdTarget's")
    say(f"        GET /api/v1/channels maps it to {ADTARGET_CHANNEL_ID}.")
    await _show_onboarding(sandbox, promoted_at)


async def _show_onboarding(sandbox: Sandbox, promoted_at: float) -> None:
    """The bot's message to the owner who promoted it, as they read it in Telegram."""

    def onboarding(call: Call) -> bool:
        to_owner = call.params.get("chat_id") == OWNER_ID and call.at >= promoted_at
        return to_owner and CHANNEL_TITLE in call.raw.get("text", "")

    try:
        message = await sandbox.telegram.wait_for_call("sendMessage", onboarding, WAIT)
    except TimeoutError:
        raise StepFailed(f"no onboarding message to the owner within {WAIT:.0f} s") from None
    say()
    say(f"        The bot's message to the owner (user {OWNER_ID}), as Telegram shows it:")
    for line in as_seen(message).splitlines():
        say("        │ " + line if line else "        │")


async def walk_through(sandbox: Sandbox) -> None:
    """Visit -> invite link -> join -> outbox row -> AdTarget; StepFailed on a miss."""
    user_id = sandbox.new_user_id()
    temp_id = str(uuid.uuid4())
    async with httpx.AsyncClient(
        base_url=sandbox.tracker_url, timeout=httpx.Timeout(30.0), trust_env=False
    ) as tracker:
        _step(1, "A visitor clicks your Meta ad; the landing page records the visit")
        visit = {
            "tempId": temp_id,
            "href": PAGE,
            "referrer": "https://m.facebook.com/",
            "fbp": FBP,
        }
        answer = await _post(tracker, wire.API_PREFIX + wire.VISIT_PATH, visit, VISITOR_HEADERS)
        cookies = answer.pop("cookies", {})
        say(block(pretty_json(answer)))
        names = ", ".join(str(c.get("name")) for c in cookies.values() if isinstance(c, dict))
        say(f"    and the cookies {names} (Set-Cookie) keep the visitor's tempId.")
        say("    The bridge stored the visit and derives fbc from the fbclid in the page URL.")

        _step(2, "The page asks for the visitor's personal invite link")
        invite = {"tempId": temp_id, "channelId": str(CHANNEL_ID)}
        link = str((await _post(tracker, wire.API_PREFIX + wire.INVITE_PATH, invite))["inviteLink"])
    say(f"← inviteLink {link}")
    _describe_link(sandbox, link)

    _step(3, "The visitor joins through that link: Telegram sends the bot a chat_member update")
    mark = await simulate_join(sandbox, link, user_id, first_name="Ada")

    _step(4, "The bridge attributes the join to the visit and queues the conversion")
    await follow_join(sandbox, mark, walkthrough=True)


async def _post(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    say(f"→ POST {client.base_url.join(path)}")
    for name, value in (headers or {}).items():
        say(f"    {name}: {value}")
    say(block(pretty_json(body)))
    try:
        response = await client.post(path, json=body, headers=headers)
    except httpx.HTTPError as error:
        raise StepFailed(f"POST {path}: {type(error).__name__}: {error}") from None
    say(f"← {response.status_code} {response.reason_phrase}")
    try:
        answer = response.json()
    except json.JSONDecodeError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict):
        raise StepFailed(f"POST {path} answered {response.status_code}: {response.text[:300]}")
    return answer


def _describe_link(sandbox: Sandbox, url: str) -> None:
    minted = sandbox.telegram.links.get(url)
    if minted is None:
        raise StepFailed(f"{url} is not a link the bot created in the Telegram simulator")
    facts = ["created by the bot (createChatInviteLink)"]
    if minted.get("member_limit"):
        facts.append(f"member_limit {minted['member_limit']}")
    if minted.get("expire_date"):
        expires = datetime.fromtimestamp(int(minted["expire_date"]), UTC)
        facts.append(f"expires {expires:%Y-%m-%d %H:%M} UTC")
    say("    " + ", ".join(facts) + ";")
    say("    the same visitor gets the same link while it lives.")


@dataclass(frozen=True, slots=True)
class JoinMark:
    """A simulated join: who, and the moment just before it (to tell its rows from
    earlier ones of the same user)."""

    user_id: int
    wall: float  # time.time()
    monotonic: float  # time.monotonic(), as the AdTarget simulator stamps requests


async def simulate_join(
    sandbox: Sandbox, link: str | None, user_id: int, first_name: str = "Test"
) -> JoinMark:
    """A user joins the sandbox channel (through `link`, if any); prints the update."""
    mark = JoinMark(user_id, time.time(), time.monotonic())
    try:
        update_id = sandbox.telegram.join(CHANNEL_ID, user_id, link, first_name=first_name)
    except ValueError as error:  # a revoked, expired or used-up link
        raise StepFailed(f"Telegram refuses the join: {error}") from None
    if update_id is None:
        raise StepFailed("the bridge did not ask Telegram for chat_member updates")
    say(f"update {update_id} (what getUpdates hands the bot):")
    say(block(pretty_json(sandbox.telegram.history[update_id])))
    try:
        await sandbox.telegram.wait_confirmed(update_id, 30.0)
    except TimeoutError:
        raise StepFailed(f"the bridge did not store and confirm update {update_id}") from None
    say(f"    The bridge stored update {update_id}, then confirmed it to Telegram.")
    return mark


async def follow_join(sandbox: Sandbox, mark: JoinMark, *, walkthrough: bool = False) -> None:
    """Show what became of `user_id`'s join: the outbox row and AdTarget's request.
    In the walkthrough, also check the request carries the walkthrough's visit."""
    db, user_id = sandbox.bridge.db, mark.user_id

    async def joined() -> LeadJoin | None:
        lead = await leads.bridge_lead(db, user_id, [CHANNEL_ID])
        return next((j for j in lead.joins if j.joined_at >= int(mark.wall)), None)

    join = await until(joined, f"the join of user {user_id}")
    if join.kind == "organic":
        say("    An organic join (not through a link the bot minted): recorded for /stats,")
        say("    nothing is sent to AdTarget for it.")
        return
    if join.kind == "attributed":
        say(f"    Attributed: user {user_id} came through {join.link_url},")
        signals = ", ".join(join.signals) or "no click ids"
        say(f"    minted for the visit {join.temp_id} ({signals}).")
    else:
        say(f"    A {join.kind} join: user {user_id} came through {join.link_url}.")
    row = await until(lambda: _conversion_row(sandbox, mark), "the conversion's outbox row")
    stored = await outbox.get(db, row.id)
    if stored is None:
        raise StepFailed(f"outbox row #{row.id} vanished")
    posted = wire.API_PREFIX + stored["path"]
    say(f"    outbox row #{row.id}: {row.kind} ({row.event_type}), POST {posted},")
    say(f"    Idempotency-Key {stored['idempotency_key']}, state {row.state} by now.")
    say("    It was written in the same transaction as the join: a crash loses nothing.")

    sent = "The courier sends it; this is the request the AdTarget simulator received"
    if walkthrough:
        _step(5, sent)
    else:
        say(sent + ":")
    request = await until(lambda: _sent(sandbox, mark), "the conversion request at AdTarget")
    show_request(request)
    if walkthrough:
        _check_attribution(request.body)
    delivered = await until(lambda: _delivered(sandbox, mark), "the row marked delivered")
    say(
        f"    outbox row #{delivered.id}: delivered, AdTarget conversion {delivered.conversion_id}."
    )
    others = [r for r in sandbox.adtarget.received if r.path != CONVERSION_PATH]
    if walkthrough and others:
        say("    AdTarget also received (each visit is forwarded through the outbox too):")
        for other in others:
            say(f"      {other.method} {other.path} → {other.status or 'no answer'}")


async def _conversion_row(sandbox: Sandbox, mark: JoinMark) -> LeadOutboxRow | None:
    lead = await leads.bridge_lead(sandbox.bridge.db, mark.user_id, [CHANNEL_ID])
    rows = (r for r in lead.outbox if r.kind == "conversion" and r.created_at >= mark.wall)
    return next(rows, None)


async def _delivered(sandbox: Sandbox, mark: JoinMark) -> LeadOutboxRow | None:
    row = await _conversion_row(sandbox, mark)
    if row is not None and row.state == "parked":
        raise StepFailed(f"outbox row #{row.id} was parked: {row.problem}")
    return row if row is not None and row.state == "delivered" else None


async def _sent(sandbox: Sandbox, mark: JoinMark) -> Received | None:
    for request in sandbox.adtarget.received_on(CONVERSION_PATH):
        body = request.body
        ours = isinstance(body, dict) and body.get("telegramUserId") == mark.user_id
        if ours and request.at >= mark.monotonic and request.status:
            return request
    return None


def show_request(request: Received) -> None:
    say(f"{request.method} {request.path}")
    for name, value in request.headers.items():
        shown = mask_key(value) if name == "authorization" else value
        say(f"    {name}: {shown}")
    say(block(pretty_json(request.body)))
    replay = " (an idempotent replay)" if request.replay else ""
    say(f"← {request.status}{replay}")


def _check_attribution(body: Any) -> None:
    if not isinstance(body, dict):
        raise StepFailed("the conversion request had no JSON body")
    fbc = str(body.get("fbc", ""))
    if not (fbc.startswith("fb.1.") and fbc.endswith(f".{FBCLID}")):
        raise StepFailed(f"fbc {fbc!r} is not derived from the fbclid {FBCLID!r}")
    say(f"    fbc {fbc}: fb.1.<visit time in ms>.<the fbclid from the page URL>")
    say("    clientIp, userAgent and eventSourceUrl: the visit's; eventTime: the join's")
    say("    Telegram date in milliseconds; channelId: AdTarget's id for the channel.")
