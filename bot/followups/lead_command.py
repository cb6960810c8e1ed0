"""/lead, /fire and /value in Telegram: who may ask about whom, and the HTML answer.

The bridge's admins (ADMIN_IDS) may ask about anyone. A channel's own admin
may ask about people who joined (or asked to join) one of their channels, and
sees only those channels; their follow-ups are pinned to that channel, so they
never land on a conversion of someone else's channel.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from bot.admin.commands import REFUSAL, AdminCommands, Reply
from bot.admin.gate import AdminGate
from bot.followups.lead import (
    FIRE_ARGS,
    LEAD_ARGS,
    VALUE_ARGS,
    LeadFollowUps,
    parse_fire,
    parse_lead,
    parse_value,
)
from bot.followups.lead_view import TELEGRAM_LIMIT, describe_outcome, render_lookup
from bot.followups.rows import InvalidFollowUp
from storage import leads
from storage.channels import Channel
from storage.db import Database

LEAD_USAGE = f"Usage: /lead {html.escape(LEAD_ARGS)}"
FIRE_USAGE = f"Usage: /fire {html.escape(FIRE_ARGS)}"
VALUE_USAGE = f"Usage: /value {html.escape(VALUE_ARGS)}"


@dataclass(frozen=True, slots=True)
class Scope:
    """What the asker may see of one user: every channel (owners) or some."""

    channels: list[Channel]  # the asker's channels (all of them for owners)
    chat_ids: list[int] | None  # None: no limit
    joined: Channel | None  # a channel admin's channel the user joined most recently

    @property
    def adtarget_ids(self) -> set[str] | None:
        if self.chat_ids is None:
            return None
        return {c.report_id for c in self.channels} | {str(c.chat_id) for c in self.channels}


class LeadCommand:
    def __init__(
        self, db: Database, gate: AdminGate, commands: AdminCommands, follow_ups: LeadFollowUps
    ) -> None:
        self._db = db
        self._gate = gate
        self._commands = commands
        self._follow_ups = follow_ups

    async def lead(self, asker: int, args: list[str]) -> Reply:
        mine = await self._commands.allowed(asker)  # as /stats decides
        if mine is None:
            return Reply(REFUSAL)
        try:
            user = parse_lead(args)
        except InvalidFollowUp as error:
            return _usage(LEAD_USAGE, error)
        scope = await self._scope(asker, mine, user)
        if isinstance(scope, Reply):
            return scope
        lookup = await self._follow_ups.look_up(user, scope.chat_ids)
        text = render_lookup(
            lookup,
            scope.channels,
            html_mode=True,
            visible_ids=scope.adtarget_ids,
            limit=TELEGRAM_LIMIT,
        )
        return Reply(text)

    async def fire(self, asker: int, args: list[str]) -> Reply:
        mine = await self._commands.allowed(asker)  # as /stats decides
        if mine is None:
            return Reply(REFUSAL)
        try:
            parsed = parse_fire(args)
        except InvalidFollowUp as error:
            return _usage(FIRE_USAGE, error)
        scope = await self._scope(asker, mine, parsed.user)
        if isinstance(scope, Reply):
            return scope
        chat_id = None
        if scope.joined is not None:
            channel_id = scope.joined.report_id
            parsed = parse_fire(args, channel_id=channel_id)
            chat_id = scope.joined.chat_id
        outcome = await self._follow_ups.fire(parsed, chat_id=chat_id)
        event: str = parsed.request.event_type
        if parsed.request.custom_event_name:
            event = f"Custom:{parsed.request.custom_event_name}"
        what = f"{event} for user {parsed.user}"
        return Reply(describe_outcome(outcome, what, html_mode=True))

    async def value(self, asker: int, args: list[str]) -> Reply:
        mine = await self._commands.allowed(asker)  # as /stats decides
        if mine is None:
            return Reply(REFUSAL)
        try:
            parsed = parse_value(args)
        except InvalidFollowUp as error:
            return _usage(VALUE_USAGE, error)
        scope = await self._scope(asker, mine, parsed.user)
        if isinstance(scope, Reply):
            return scope
        outcome = await self._follow_ups.value(
            parsed,
            channel_ids=scope.adtarget_ids,
            chat_id=scope.joined.chat_id if scope.joined else None,
        )
        amount = f"{parsed.request.value:g} {parsed.request.currency}"
        what = f"Value {amount} for conversion {parsed.conversion_id} of user {parsed.user}"
        return Reply(describe_outcome(outcome, what, html_mode=True))

    async def _scope(self, asker: int, mine: list[Channel], user: int) -> Scope | Reply:
        if self._gate.is_owner(asker):
            return Scope(mine, None, None)
        joined = await leads.channels_joined(self._db, user, [c.chat_id for c in mine])
        if not joined:
            # Refused like /stats refuses a channel that is not theirs: no data.
            return Reply(f"Sorry, user {user} has not joined any channel of yours.")
        latest = next(c for c in mine if c.chat_id == joined[0])
        return Scope(mine, joined, latest)


def _usage(usage: str, error: InvalidFollowUp) -> Reply:
    return Reply(f"{usage}\n{html.escape(str(error))}")
