"""/lead, /fire and /value without the transport: what Telegram and the command
line share (bot/followups/lead_command.py and bot/cli/leads.py only add who may ask and
how the answer is shown).

A follow-up is validated, then checked against AdTarget's own record of the
lead (a direct read), then queued through the outbox. The read turns the
common mistakes (a user AdTarget never saw, a wrong conversion id) into an
immediate plain answer instead of a row parked minutes later; when AdTarget
cannot be asked, the follow-up is queued anyway and the courier delivers it
(or parks it with the same plain reason and alerts the admins).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from bot.adtarget.client import AdTargetClient
from bot.adtarget.errors import (
    AdTargetError,
    AuthError,
    InvalidPayload,
    LeadNotFound,
    no_conversion,
    no_lead,
)
from bot.adtarget.models import Lead, LeadEventRequest, ValueRequest
from bot.followups import rows as followups
from bot.followups.rows import InvalidFollowUp, Queued
from storage.db import Database
from storage.leads import BridgeLead, bridge_lead

EVENTS = "Lead|Purchase|CompleteRegistration|Subscribe|Custom:Name"
LEAD_ARGS = "<telegram-user-id>"
FIRE_ARGS = f"<telegram-user-id> <{EVENTS}> [value currency]"
VALUE_ARGS = "<telegram-user-id> <conversion-id> <value> <currency>"


@dataclass(frozen=True, slots=True)
class FireArgs:
    user: int
    request: LeadEventRequest


@dataclass(frozen=True, slots=True)
class ValueArgs:
    user: int
    conversion_id: str
    request: ValueRequest


def parse_lead(words: Sequence[str]) -> int:
    if len(words) != 1:
        raise InvalidFollowUp("give exactly one telegram-user-id")
    return followups.parse_user_id(words[0])


def parse_fire(words: Sequence[str], *, channel_id: str | None = None) -> FireArgs:
    """`<user> <event> [value currency]`; raises InvalidFollowUp naming the argument."""
    if len(words) not in (2, 4):
        if len(words) == 3:
            raise InvalidFollowUp("value and currency go together, like 19.99 EUR")
        raise InvalidFollowUp("give a telegram-user-id and an event")
    user = followups.parse_user_id(words[0])
    value = followups.parse_amount(words[2]) if len(words) == 4 else None
    currency = words[3] if len(words) == 4 else None
    request = followups.event_request(
        words[1], value=value, currency=currency, channel_id=channel_id
    )
    return FireArgs(user, request)


def parse_value(words: Sequence[str]) -> ValueArgs:
    if len(words) != 4:
        raise InvalidFollowUp("give a telegram-user-id, a conversion-id, a value and a currency")
    user = followups.parse_user_id(words[0])
    conversion_id = followups.check_conversion_id(words[1])
    request = followups.value_request(followups.parse_amount(words[2]), words[3])
    return ValueArgs(user, conversion_id, request)


@dataclass(frozen=True, slots=True)
class LeadLookup:
    """Both sides of one user: AdTarget's lead (or why there is none) and the bridge's rows."""

    user: int
    lead: Lead | None
    problem: str | None  # "AdTarget has no lead for user 7", "could not ask AdTarget: ..."
    bridge: BridgeLead


@dataclass(frozen=True, slots=True)
class FollowUpOutcome:
    """A follow-up's fate: queued (perhaps with a note), or refused with a plain reason."""

    queued: Queued | None = None
    note: str | None = None
    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return self.queued is not None


class LeadFollowUps:
    """One lead looked up on both sides, and follow-ups for it (events, values)
    queued once AdTarget's record of the lead has been checked."""

    def __init__(
        self, db: Database, client: AdTargetClient, wake: Callable[[], None] | None = None
    ) -> None:
        self._db = db
        self._client = client
        self._wake = wake

    async def look_up(self, user: int, chat_ids: Sequence[int] | None = None) -> LeadLookup:
        """`chat_ids`: the channels the asker may see (None: all)."""
        bridge = await bridge_lead(self._db, user, chat_ids)
        try:
            lead: Lead | None = await self._client.get_lead(user)
            problem = None
        except LeadNotFound:
            lead, problem = None, no_lead(user)
        except AdTargetError as error:
            lead, problem = None, f"could not ask AdTarget: {error}"
        return LeadLookup(user, lead, problem, bridge)

    async def fire(
        self, args: FireArgs, *, chat_id: int | None = None, idempotency_key: str | None = None
    ) -> FollowUpOutcome:
        """`idempotency_key`: the caller's own (a payment id), so a repeat queues nothing."""
        lead, refusal, note = await self._check(args.user)
        if refusal is not None:
            return FollowUpOutcome(refusal=refusal)
        del lead  # any lead will do: AdTarget picks the channel when none is given
        row = followups.event_row(
            args.user, args.request, chat_id=chat_id, idempotency_key=idempotency_key
        )
        return FollowUpOutcome(await followups.queue(self._db, row, self._wake), note)

    async def value(
        self,
        args: ValueArgs,
        *,
        channel_ids: Collection[str] | None = None,
        chat_id: int | None = None,
        idempotency_key: str | None = None,
    ) -> FollowUpOutcome:
        """`channel_ids`: AdTarget channel ids the asker may touch (None: any);
        `idempotency_key` as for fire()."""
        lead, refusal, note = await self._check(args.user)
        if refusal is not None:
            return FollowUpOutcome(refusal=refusal)
        if lead is not None:
            found = [c for c in lead.conversions if c.conversion_id == args.conversion_id]
            if not found or (channel_ids is not None and found[0].channel_id not in channel_ids):
                missing = no_conversion(args.user, args.conversion_id)
                return FollowUpOutcome(refusal=f"{missing}; nothing queued")
        elif channel_ids is not None:
            # Whose conversion it is cannot be told without AdTarget's answer.
            return FollowUpOutcome(refusal=f"{note}; nothing queued, try again later")
        row = followups.value_row(
            args.user,
            args.conversion_id,
            args.request,
            chat_id=chat_id,
            idempotency_key=idempotency_key,
        )
        return FollowUpOutcome(await followups.queue(self._db, row, self._wake), note)

    async def _check(self, user: int) -> tuple[Lead | None, str | None, str | None]:
        """(lead, refusal, note): refusal when AdTarget's answer is final, a note when
        AdTarget could not be asked (the follow-up is queued all the same)."""
        try:
            return await self._client.get_lead(user), None, None
        except LeadNotFound:
            return None, f"{no_lead(user)}; nothing queued", None
        except AuthError as error:
            return None, f"AdTarget refused the API key ({error}); check ADTARGET_API_KEY", None
        except InvalidPayload as error:
            return None, f"AdTarget refused the request: {error}", None
        except AdTargetError as error:
            return None, None, f"AdTarget could not be asked first ({error})"
