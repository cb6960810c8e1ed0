"""Joins and leaves: match the link, record the join and its outbox row together.

Handlers return `JoinSeen` / `LeaveSeen` (plain data); the poller hands a whole
getUpdates batch of them to `JoinRecorder.persist`, inside the same transaction
that marks those updates done. A few statements per batch rather than a dozen
per join is what lets ingest keep up with thousands of joins a second.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from bot.adtarget.events import EventType, JoinEvent, effective_event
from bot.adtarget.wire import CONVERSION_PATH
from bot.joins.conversion import conversion_body, conversion_key
from bot.logs import ids
from storage import channels, invite_links, join_requests, joins, outbox, visits
from storage.channels import Channel
from storage.db import Database, Transaction
from storage.invite_links import InviteLink
from storage.outbox import OutboxRow

log = logging.getLogger(__name__)

# Our links among a batch's URLs, each with the visit it was handed to.
FoundLinks = dict[str, tuple[InviteLink, visits.Attribution | None]]
# How far apart an approval and Telegram's own report of that join may be.
ECHO_WINDOW = 300
# The kind of the JoinRecorded a leave is reported as.
LEAVE = "leave"


@dataclass(frozen=True, slots=True)
class ChatRef:
    id: int
    title: str
    username: str | None
    type: str


@dataclass(frozen=True, slots=True)
class JoinSeen:
    """A join as a handler read it off a chat_member (or join-request) update."""

    chat: ChatRef
    user_id: int
    link_url: str | None
    joined_at: int  # Telegram's date, seconds
    via_join_request: bool = False
    update_id: int | None = None


@dataclass(frozen=True, slots=True)
class LeaveSeen:
    chat: ChatRef
    user_id: int
    left_at: int
    update_id: int | None = None


Seen = JoinSeen | LeaveSeen


@dataclass(frozen=True, slots=True)
class JoinRecorded:
    kind: str  # attributed | campaign | organic, or LEAVE for a leave
    join_id: int | None  # None: this join was already recorded (or a leave)
    reported: bool  # an outbox row was queued for it


@dataclass(frozen=True, slots=True)
class JoinBatch:
    """What one transaction recorded, and the outbox rows it claimed for the courier."""

    recorded: list[JoinRecorded]
    claimed: list[OutboxRow]
    # Joins and leaves in chats the bot does not track: not recorded.
    untracked: int = 0


class ClaimingCourier(Protocol):
    """The courier as the recorder sees it (`bot.courier.service.Courier`): it claims
    new outbox rows in the recorder's transaction and sends them once it committed."""

    async def claim_in(self, tx: Transaction) -> list[OutboxRow]: ...

    def send_claimed(self, rows: Sequence[OutboxRow]) -> None: ...


@dataclass(frozen=True, slots=True)
class ReportingPolicy:
    default_event: EventType
    site_id: str | None = None
    send_organic: bool = False


def join_kind(link: InviteLink | None) -> str:
    if link is None:
        return "organic"
    return "campaign" if link.kind == "campaign" else "attributed"


class JoinRecorder:
    def __init__(
        self,
        db: Database,
        policy: ReportingPolicy,
        courier: ClaimingCourier,
        *,
        on_attributed_join: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._policy = policy
        self._courier = courier
        # Told after a join through one of our links is committed: the invite pool
        # revokes the used link, the follow-ups schedule their checks.
        self._on_attributed_join = on_attributed_join
        # Committed joins by kind and leaves, read by /metrics.
        self.counts: Counter[str] = Counter()
        # Joins and leaves seen in chats nobody set the bot up in, read by /metrics.
        self.untracked = 0

    def wants(self, result: object) -> bool:
        return isinstance(result, JoinSeen | LeaveSeen)

    async def record(self, items: Sequence[Seen]) -> list[JoinRecorded]:
        """Persist in a transaction of its own (callers outside the poller)."""
        async with self._db.transaction() as tx:
            batch = await self.persist(tx, items)
        self.after_commit(batch)
        return batch.recorded

    def after_commit(self, batch: JoinBatch) -> None:
        recorded = batch.recorded
        self.untracked += batch.untracked
        self.counts.update(r.kind for r in recorded if r.join_id is not None or r.kind == LEAVE)
        if any(r.reported for r in recorded):
            # First: the send starts before anything else gets the event loop.
            self._courier.send_claimed(batch.claimed)
        if any(r.join_id is not None and r.kind != "organic" for r in recorded):
            self._on_attributed_join()

    async def persist(self, tx: Transaction, items: Sequence[object]) -> JoinBatch:
        """Write joins, their outbox rows and leaves in the caller's transaction, and
        claim the new rows for the courier in it."""
        seen = [i for i in items if isinstance(i, JoinSeen | LeaveSeen)]
        known = await channels.tracked_in(
            tx, [(i.chat.id, i.chat.title, i.chat.username) for i in seen]
        )
        untracked = [i for i in seen if i.chat.id not in known]
        for item in untracked:
            log.info(
                "update %s: chat %d is not tracked; ignored",
                item.update_id,
                item.chat.id,
                extra=ids(update_id=item.update_id, chat_id=item.chat.id),
            )
        seen_joins = [i for i in seen if isinstance(i, JoinSeen) and i.chat.id in known]
        leaves = [i for i in seen if isinstance(i, LeaveSeen) and i.chat.id in known]
        found = await invite_links.find_with_visits(
            tx, sorted({j.link_url for j in seen_joins if j.link_url})
        )
        matched = [_ours(found, j) for j in seen_joins]
        seen_joins, matched = await self._through_requests(tx, seen_joins, matched, found)
        echoes = await self._echoes(tx, seen_joins, matched)
        attributions = {
            link.visit_id: visit
            for link, visit in found.values()
            if link.visit_id is not None and visit is not None
        }
        rows = []
        for index, (j, link) in enumerate(zip(seen_joins, matched, strict=True)):
            if index in echoes:
                continue
            visit = attributions.get(link.visit_id) if link and link.visit_id else None
            rows.append(
                joins.NewJoin(
                    chat_id=j.chat.id,
                    user_id=j.user_id,
                    kind=join_kind(link),
                    link_id=link.id if link else None,
                    link_url=j.link_url,
                    via_join_request=j.via_join_request,
                    joined_at=j.joined_at,
                    update_id=j.update_id,
                    # Copied for /stats' top sources: no three-table join at read time.
                    utm_source=visit.utm_source if visit else None,
                    utm_campaign=visit.utm_campaign if visit else None,
                    campaign=link.campaign if link else None,
                )
            )
        kept = [index for index in range(len(seen_joins)) if index not in echoes]
        inserted = await joins.insert_many(tx, rows)
        new_ids = {kept[position]: join_id for position, join_id in inserted.items()}
        new_leaves = await joins.record_leaves(
            tx,
            [joins.NewLeave(x.chat.id, x.user_id, x.left_at, x.update_id) for x in leaves],
        )
        # After the leaves: a leave and a rejoin in one batch end with the member present.
        repeated = [position for position in range(len(rows)) if position not in inserted]
        reopened = await joins.reopen(tx, [rows[position] for position in repeated])
        rejoined = {kept[repeated[i]] for i in reopened}
        recorded = await self._queue_conversions(
            tx, seen_joins, matched, new_ids, rejoined, known, attributions
        )
        await invite_links.mark_used(
            tx, [link.id for i, link in enumerate(matched) if link and i in new_ids]
        )
        for leave in leaves:
            log.info(
                "update %s: user %d left %d",
                leave.update_id,
                leave.user_id,
                leave.chat.id,
                extra=ids(update_id=leave.update_id, user_id=leave.user_id, chat_id=leave.chat.id),
            )
        claimed = await self._courier.claim_in(tx) if any(r.reported for r in recorded) else []
        # Only new leaves: a repeated one (ON CONFLICT DO NOTHING) must not count again.
        leaves_recorded = [JoinRecorded(LEAVE, None, False) for _ in range(new_leaves)]
        return JoinBatch(recorded + leaves_recorded, claimed, len(untracked))

    @staticmethod
    async def _through_requests(
        tx: Transaction,
        seen_joins: list[JoinSeen],
        matched: list[InviteLink | None],
        found: FoundLinks,
    ) -> tuple[list[JoinSeen], list[InviteLink | None]]:
        """Joins without a link of ours by people whose join request came through
        one: the join is that request's. Telegram's report of an approved request
        may lack the link and via_join_request (tdlib/telegram-bot-api#650), and
        may arrive before the bot's approval call has returned and been recorded;
        read through the request's link, it is the same join the approval records
        (one row per chat, user and link), never a second, organic one.
        `found` gains the requests' links, with their visits, for the attribution."""
        unmatched = [i for i, link in enumerate(matched) if link is None]
        if not unmatched:
            return seen_joins, matched  # the usual case: no query
        since = min(seen_joins[i].joined_at for i in unmatched) - ECHO_WINDOW
        urls = await join_requests.request_links(
            tx,
            [(seen_joins[i].chat.id, seen_joins[i].user_id) for i in unmatched],
            approved_since=since,
        )
        if not urls:
            return seen_joins, matched
        found.update(await invite_links.find_with_visits(tx, sorted(set(urls.values()))))
        joins_out, matched_out = list(seen_joins), list(matched)
        for i in unmatched:
            url = urls.get((seen_joins[i].chat.id, seen_joins[i].user_id))
            if url is None:
                continue
            joins_out[i] = replace(seen_joins[i], link_url=url, via_join_request=True)
            matched_out[i] = _ours(found, joins_out[i])
        return joins_out, matched_out

    async def _echoes(
        self,
        tx: Transaction,
        seen_joins: list[JoinSeen],
        matched: list[InviteLink | None],
    ) -> set[int]:
        """Indices of joins without a link of ours that repeat, moments later, a
        join the bot recorded when it approved that member's request.

        An approved join request is recorded as the join when the approval
        succeeds. Telegram's chat_member update that follows may lack the link,
        and even `via_join_request` (the Bot API sets it only for requests made
        without a link; tdlib/telegram-bot-api#650): it is recognised by chat,
        user and time, and must not count as a second (organic) join. One that
        does carry the flag may echo any join recorded moments before.
        """
        candidates = [i for i, link in enumerate(matched) if link is None]
        if not candidates:
            return set()
        since = min(seen_joins[i].joined_at for i in candidates) - ECHO_WINDOW
        recent = await joins.recent_joins(
            tx, [(seen_joins[i].chat.id, seen_joins[i].user_id) for i in candidates], since=since
        )
        return {
            i
            for i in candidates
            if any(
                abs(at - seen_joins[i].joined_at) <= ECHO_WINDOW
                and (approved or seen_joins[i].via_join_request)
                for at, approved in recent.get((seen_joins[i].chat.id, seen_joins[i].user_id), [])
            )
        }

    async def _queue_conversions(
        self,
        tx: Transaction,
        seen_joins: list[JoinSeen],
        matched: list[InviteLink | None],
        new_ids: dict[int, int],
        rejoined: set[int],
        known: dict[int, Channel],
        attributions: dict[int, visits.Attribution],
    ) -> list[JoinRecorded]:
        rows: list[outbox.NewRow] = []
        recorded: list[JoinRecorded] = []
        events: dict[int, JoinEvent] = {}  # by channel: parsed once per batch
        for index, (seen, link) in enumerate(zip(seen_joins, matched, strict=True)):
            kind = join_kind(link)
            join_id = new_ids.get(index)
            report = join_id is not None and (kind != "organic" or self._policy.send_organic)
            recorded.append(JoinRecorded(kind, join_id, report))
            if join_id is None:
                log.info(
                    "update %s: user %d in %d %s",
                    seen.update_id,
                    seen.user_id,
                    seen.chat.id,
                    "rejoined through the same link: present again, its conversion was sent"
                    " for the first join"
                    if index in rejoined
                    else "already recorded as joined: nothing to send",
                    extra=ids(update_id=seen.update_id, user_id=seen.user_id, chat_id=seen.chat.id),
                )
                continue
            log.info(
                "update %s: %s join %d of user %d in %d%s",
                seen.update_id,
                kind,
                join_id,
                seen.user_id,
                seen.chat.id,
                ", conversion queued" if report else "",
                extra=ids(
                    update_id=seen.update_id,
                    join_id=join_id,
                    user_id=seen.user_id,
                    chat_id=seen.chat.id,
                    link_id=link.id if link else None,
                ),
            )
            if not report:
                continue
            channel = known[seen.chat.id]
            if (event := events.get(channel.chat_id)) is None:
                event = events[channel.chat_id] = effective_event(
                    channel, self._policy.default_event
                )
            visit = attributions.get(link.visit_id) if link and link.visit_id else None
            rows.append(
                outbox.NewRow(
                    kind="conversion",
                    path=CONVERSION_PATH,
                    body=conversion_body(
                        telegram_user_id=seen.user_id,
                        channel_id=channel.report_id,
                        event=event,
                        joined_at=seen.joined_at,
                        visit=visit,
                        campaign=link.campaign if link else None,
                        site_id=self._policy.site_id,
                    ),
                    idempotency_key=conversion_key(
                        seen.chat.id, seen.user_id, link.id if link else None, seen.joined_at
                    ),
                    join_id=join_id,
                    telegram_user_id=seen.user_id,
                    chat_id=seen.chat.id,
                    event_type=str(event.event),
                    event_time_ms=seen.joined_at * 1000,
                )
            )
        await outbox.enqueue_many(tx, rows)
        return recorded


def _ours(found: FoundLinks, join: JoinSeen) -> InviteLink | None:
    """The join's link when it is one of ours, minted for this chat: a URL only
    counts for the chat it was minted in."""
    hit = found.get(join.link_url or "")
    return hit[0] if hit is not None and hit[0].chat_id == join.chat.id else None
