"""Joins and leaves: match the link, record the join and its outbox row together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from bot.conversions import CONVERSION_PATH, conversion_body, conversion_key
from bot.events import EventType
from storage import channels, invite_links, joins, outbox, visits
from storage.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatRef:
    id: int
    title: str
    username: str | None
    type: str


@dataclass(frozen=True, slots=True)
class JoinSeen:
    """A join as the handler read it off a chat_member (or join-request) update."""

    chat: ChatRef
    user_id: int
    link_url: str | None
    joined_at: int
    via_join_request: bool = False
    update_id: int | None = None


@dataclass(frozen=True, slots=True)
class JoinRecorded:
    kind: str  # attributed | campaign | organic
    join_id: int | None  # None: this join was already recorded
    outbox_id: int | None


@dataclass(frozen=True, slots=True)
class ReportingPolicy:
    default_event: EventType
    site_id: str | None = None
    send_organic: bool = False


class JoinRecorder:
    def __init__(self, db: Database, policy: ReportingPolicy, wake_courier: Callable[[], None]):
        self._db = db
        self._policy = policy
        self._wake = wake_courier

    async def record_join(self, seen: JoinSeen) -> JoinRecorded:
        async with self._db.transaction() as conn:
            channel = await channels.ensure_known(
                conn,
                seen.chat.id,
                title=seen.chat.title,
                username=seen.chat.username,
                chat_type=seen.chat.type,
            )
            link = (
                await invite_links.find_by_url(conn, seen.chat.id, seen.link_url)
                if seen.link_url
                else None
            )
            if link is None:
                kind = "organic"
            else:
                kind = "campaign" if link.kind == "campaign" else "attributed"
            join_id = await joins.insert(
                conn,
                chat_id=seen.chat.id,
                user_id=seen.user_id,
                kind=kind,
                link_id=link.id if link else None,
                link_url=seen.link_url,
                via_join_request=seen.via_join_request,
                joined_at=seen.joined_at,
                update_id=seen.update_id,
            )
            if join_id is None:
                log.info(
                    "update %s: join of user %d in %d already recorded; nothing to send",
                    seen.update_id,
                    seen.user_id,
                    seen.chat.id,
                )
                return JoinRecorded(kind, None, None)
            outbox_id = None
            if link is not None:
                await invite_links.mark_used(conn, link.id)
            if kind != "organic" or self._policy.send_organic:
                visit = (
                    await visits.get_by_id(conn, link.visit_id)
                    if link is not None and link.visit_id is not None
                    else None
                )
                event = (
                    EventType.parse(channel.event_type)
                    if channel.event_type
                    else self._policy.default_event
                )
                body = conversion_body(
                    telegram_user_id=seen.user_id,
                    channel_id=channel.report_id,
                    event=event,
                    joined_at=seen.joined_at,
                    visit=visit,
                    campaign=link.campaign if link is not None else None,
                    site_id=self._policy.site_id,
                )
                outbox_id = await outbox.enqueue(
                    conn,
                    kind="conversion",
                    path=CONVERSION_PATH,
                    body=body,
                    idempotency_key=conversion_key(
                        seen.chat.id, seen.user_id, link.id if link else None, seen.joined_at
                    ),
                    join_id=join_id,
                    telegram_user_id=seen.user_id,
                    chat_id=seen.chat.id,
                    event_type=str(event),
                    event_time_ms=seen.joined_at * 1000,
                )
        log.info(
            "update %s: %s join %d of user %d in %d%s",
            seen.update_id,
            kind,
            join_id,
            seen.user_id,
            seen.chat.id,
            f", outbox row {outbox_id}" if outbox_id else "",
        )
        if outbox_id is not None:
            self._wake()
        return JoinRecorded(kind, join_id, outbox_id)

    async def record_leave(
        self, chat: ChatRef, user_id: int, left_at: int, update_id: int | None
    ) -> bool:
        async with self._db.transaction() as conn:
            await channels.ensure_known(
                conn, chat.id, title=chat.title, username=chat.username, chat_type=chat.type
            )
            recorded = await joins.record_leave(
                conn, chat_id=chat.id, user_id=user_id, left_at=left_at, update_id=update_id
            )
        if recorded:
            log.info("update %s: user %d left %d", update_id, user_id, chat.id)
        return recorded
