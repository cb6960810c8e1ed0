"""The /lead screen: AdTarget's record of one person beside the bridge's, as HTML
for Telegram or plain text for the command line. One screen to answer "why was
this join not counted"."""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime

from bot.adtarget.dispatch import capi_words, dispatch_words
from bot.adtarget.models import LeadConversion, Timestamp
from bot.followups.lead import FollowUpOutcome, LeadLookup
from bot.followups.rows import KIND_EVENT, KIND_VALUE
from storage.channels import Channel
from storage.leads import BridgeLead

TELEGRAM_LIMIT = 4096
_KINDS = {
    "conversion": "conversion",
    KIND_EVENT: "follow-up event",
    KIND_VALUE: "value",
    "visit": "visit forward",
    "update_fbp": "fbp update",
}


def when(value: Timestamp | float | None) -> str:
    """UTC, to the minute; AdTarget's times are ISO-8601 text or Unix s / ms."""
    if value is None:
        return "?"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        seconds = value / 1000 if value > 10**11 else value
        moment = datetime.fromtimestamp(seconds, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


class _Writer:
    def __init__(self, *, html_mode: bool) -> None:
        self.html_mode = html_mode
        self.lines: list[str] = []
        self.esc: Callable[[str], str] = html.escape if html_mode else str

    def head(self, text: str) -> None:
        self.lines.append(f"<b>{html.escape(text)}</b>" if self.html_mode else text)

    def add(self, text: str) -> None:
        self.lines.append(text)

    def text(self, limit: int | None = None) -> str:
        out = "\n".join(self.lines)
        if limit is not None and len(out) > limit:
            # Cut at a line so no HTML tag is left open.
            out = out[: out.rfind("\n", 0, limit - 2)] + "\n…"
        return out


def _titles(channels: list[Channel]) -> dict[str, str]:
    """Any id AdTarget or the bridge may name a channel by -> its title."""
    titles: dict[str, str] = {}
    for channel in channels:
        titles[str(channel.chat_id)] = channel.title
        if channel.adtarget_channel_id:
            titles[channel.adtarget_channel_id] = channel.title
    return titles


def _conversion(c: LeadConversion, titles: dict[str, str], esc: Callable[[str], str]) -> str:
    channel = titles.get(c.channel_id)
    where = f"{channel} ({c.channel_id})" if channel else c.channel_id
    parts = [f"{c.event_type} on {where}", capi_words(c.capi_status), when(c.attributed_at)]
    if c.event_value is not None:
        parts.append(f"value {c.event_value:g} {c.event_currency or ''}".rstrip())
    parts.append(f"id {c.conversion_id}" + (f" ({c.source})" if c.source else ""))
    return "• " + esc(" — ".join(parts))


def render_lookup(
    lookup: LeadLookup,
    channels: list[Channel],
    *,
    html_mode: bool,
    visible_ids: set[str] | None = None,
    limit: int | None = None,
) -> str:
    """`visible_ids`: AdTarget channel ids the asker may see (None: all)."""
    out = _Writer(html_mode=html_mode)
    titles = _titles(channels)
    out.head(f"User {lookup.user}")
    out.add("")
    out.head("AdTarget")
    if lookup.lead is None:
        out.add(out.esc(f"{lookup.problem}."))
    else:
        lead = lookup.lead
        # when() gives AdTarget's own text back when it is no date it can read.
        seen = f"first seen {when(lead.first_seen_at)}, last seen {when(lead.last_seen_at)}"
        out.add(out.esc(seen))
        if lead.external_user_id:
            out.add(out.esc(f"external user id: {lead.external_user_id}"))
        shown = [c for c in lead.conversions if visible_ids is None or c.channel_id in visible_ids]
        if not shown:
            out.add("no conversions" + (" on your channels" if visible_ids is not None else ""))
        out.lines += [_conversion(c, titles, out.esc) for c in shown]
    out.add("")
    out.head("Bridge")
    _bridge(out, lookup.bridge, titles)
    return out.text(limit)


def _bridge(out: _Writer, seen: BridgeLead, titles: dict[str, str]) -> None:
    if seen.empty:
        out.add("nothing recorded: no join, join request or queued request for this user.")
        return
    esc = out.esc
    for join in seen.joins:
        title = titles.get(str(join.chat_id), str(join.chat_id))
        line = f"• {join.kind} join to {title}, {when(join.joined_at)}"
        if join.via_join_request:
            line += " (join request)"
        if join.campaign:
            line += f", campaign “{join.campaign}”"
        if join.link_url:
            line += f", link {join.link_url}"
        out.add(esc(line))
        if join.temp_id:
            signals = ", ".join(join.signals) or "no ad click id"
            source = f", utm_source {join.utm_source}" if join.utm_source else ""
            out.add(esc(f"  visit {join.temp_id} at {when(join.visited_at)}: {signals}{source}"))
        if join.left_at is not None:
            out.add(esc(f"  left {when(join.left_at)}"))
    for request in seen.requests:
        title = titles.get(str(request.chat_id), str(request.chat_id))
        line = f"• join request to {title}, {when(request.requested_at)}: {request.state}"
        out.add(esc(line + (f" ({request.last_error})" if request.last_error else "")))
    joined_leaves = {(j.chat_id, j.left_at) for j in seen.joins}
    for leave in seen.leaves:
        if (leave.chat_id, leave.left_at) not in joined_leaves:
            title = titles.get(str(leave.chat_id), str(leave.chat_id))
            out.add(esc(f"• left {title}, {when(leave.left_at)}"))
    if seen.outbox:
        out.add("Sent to AdTarget:")
    for row in seen.outbox:
        what = _KINDS.get(row.kind, row.kind)
        line = f"• #{row.id} {what}"
        if row.event_type:
            line += f" {row.event_type}"
        line += f": {row.state}"
        if row.state == "delivered":
            line += f" {when(row.delivered_at)}"
            if row.conversion_id:
                line += f" (conversion {row.conversion_id})"
        elif row.attempts:
            line += f" after {row.attempts} attempt(s)"
        if row.problem:
            line += f" — {row.problem}"
        out.add(esc(line))
        if row.state == "delivered" and (words := dispatch_words(row.dispatched, row.warning)):
            out.add(esc(f"  {words}"))


def describe_outcome(outcome: FollowUpOutcome, what: str, *, html_mode: bool) -> str:
    """One answer for a queued (or refused) follow-up."""
    esc: Callable[[str], str] = html.escape if html_mode else str
    if outcome.queued is None:
        return esc(f"{outcome.refusal}.")
    if outcome.queued.row_id is None:
        text = f"{what} was already queued (key {outcome.queued.idempotency_key})."
    else:
        text = f"{what} queued as outbox row #{outcome.queued.row_id}."
    if outcome.note:
        text += f" {outcome.note}; the bridge sends it once AdTarget answers."
    return esc(text)
