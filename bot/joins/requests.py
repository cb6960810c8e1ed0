"""Join-request mode: attribution recorded at request time, the approval is the join.

With APPROVE_JOIN_REQUESTS the bot approves each request through one of our
links; a successful approval is recorded as the (attributed) join at once, so a
chat_member update that Telegram never sends costs nothing, and one it does
send is recognised as the same join.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter

from bot.backoff import Backoff
from bot.joins.recorder import ChatRef, JoinRecorder, JoinSeen
from bot.logs import ids
from bot.waiting import wait_any
from storage import channels, invite_links, join_requests
from storage.db import Database, Transaction

log = logging.getLogger(__name__)

IDLE_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class JoinRequestSeen:
    chat: ChatRef
    user_id: int
    link_url: str | None
    requested_at: int
    update_id: int | None = None


class JoinRequestApprover:
    """Records join requests in tracked chats and, with APPROVE_JOIN_REQUESTS,
    approves them, retrying until Telegram answers; each approval is recorded as the
    join."""

    def __init__(
        self,
        bot: Bot,
        db: Database,
        recorder: JoinRecorder,
        *,
        approve: bool,
        retry_base: float = 2.0,
        retry_cap: float = 300.0,
    ) -> None:
        self._bot = bot
        self._db = db
        self._recorder = recorder
        self._approve = approve
        # Exact waits, no jitter: approvals go out one at a time from one loop,
        # so requests whose retries fall due together still do not arrive at once.
        self._retry = Backoff(base=retry_base, cap=retry_cap)
        self._wake = asyncio.Event()
        self.approved = 0
        # Requests seen in chats nobody set the bot up in, read by /metrics.
        self.untracked = 0

    def wants(self, result: object) -> bool:
        return isinstance(result, JoinRequestSeen)

    async def persist(self, tx: Transaction, items: Sequence[object]) -> int:
        """Store the requests in tracked chats; returns how many were in chats the
        bot does not track (ignored)."""
        requests = [i for i in items if isinstance(i, JoinRequestSeen)]
        tracked = await channels.tracked_in(
            tx, [(s.chat.id, s.chat.title, s.chat.username) for s in requests]
        )
        seen = [s for s in requests if s.chat.id in tracked]
        for s in requests:
            if s.chat.id not in tracked:
                log.info(
                    "update %s: join request in chat %d, which is not tracked; ignored",
                    s.update_id,
                    s.chat.id,
                    extra=ids(update_id=s.update_id, chat_id=s.chat.id),
                )
        links = await invite_links.find_by_urls(
            tx, sorted({s.link_url for s in seen if s.link_url})
        )
        rows = []
        for s in seen:
            link = links.get(s.link_url or "")
            ours = link is not None and link.chat_id == s.chat.id
            # Only requests through our links are ours to approve; others are
            # left to the channel's admins.
            state = "pending" if ours and self._approve else "manual"
            rows.append(
                join_requests.NewRequest(
                    chat_id=s.chat.id,
                    user_id=s.user_id,
                    link_id=link.id if ours and link else None,
                    link_url=s.link_url,
                    requested_at=s.requested_at,
                    update_id=s.update_id,
                    state=state,
                )
            )
            log.info(
                "update %s: join request of user %d in %d (%s)",
                s.update_id,
                s.user_id,
                s.chat.id,
                "to approve" if state == "pending" else "left to admins",
                extra=ids(update_id=s.update_id, user_id=s.user_id, chat_id=s.chat.id),
            )
        await join_requests.insert_many(tx, rows)
        return len(requests) - len(seen)

    def after_commit(self, persisted: int) -> None:
        self.untracked += persisted
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            wait = IDLE_WAIT
            try:
                for request in await join_requests.due(self._db, now=time.time()):
                    if stop.is_set():
                        return
                    pause = await self._decide(request)
                    if pause:
                        wait = pause
                        break
                due = await join_requests.next_due_at(self._db)
                if due is not None:
                    wait = min(wait, max(due - time.time(), 0.05))
            except Exception:
                log.exception("join request approvals failed; trying again shortly")
            await wait_any(self._wake, stop, timeout=wait)

    async def _decide(self, request: join_requests.DueRequest) -> float:
        """Approve one request; returns seconds to pause on a Telegram 429, else 0."""
        try:
            await self._bot.approve_chat_join_request(
                chat_id=request.chat_id, user_id=request.user_id
            )
        except TelegramRetryAfter as error:
            return float(error.retry_after)
        except TelegramBadRequest as error:
            # The request is gone (withdrawn, expired, handled by an admin): final.
            log.warning(
                "join request %d of user %d not approved: %s",
                request.id,
                request.user_id,
                error.message,
                extra=_request_ids(request),
            )
            await join_requests.mark_failed(
                self._db, request.id, error=error.message, retry_at=None
            )
            return 0.0
        except (TelegramAPIError, OSError, TimeoutError) as error:
            delay = self._retry.delay(request.attempts + 1)  # attempts: failures before
            log.warning(
                "approving join request %d failed: %s; retrying in %.0f s",
                request.id,
                error,
                delay,
                extra=_request_ids(request),
            )
            await join_requests.mark_failed(
                self._db, request.id, error=str(error), retry_at=time.time() + delay
            )
            return 0.0
        channel = await channels.get(self._db, request.chat_id)
        chat = ChatRef(
            request.chat_id,
            channel.title if channel else "",
            channel.username if channel else None,
            "channel",
        )
        joined = JoinSeen(
            chat=chat,
            user_id=request.user_id,
            link_url=request.link_url,
            joined_at=int(time.time()),
            via_join_request=True,
        )

        async with self._db.transaction() as tx:
            await join_requests.mark_approved(tx, request.id)
            batch = await self._recorder.persist(tx, [joined])
        self._recorder.after_commit(batch)
        recorded = batch.recorded
        self.approved += 1
        join_id = recorded[0].join_id if recorded else None
        log.info(
            "join request %d of user %d approved (%s)",
            request.id,
            request.user_id,
            # Telegram may report the join (chat_member) before the approval returns.
            "already recorded from Telegram's update" if join_id is None else f"join {join_id}",
            extra={**_request_ids(request), **ids(join_id=join_id)},
        )
        return 0.0


def _request_ids(request: join_requests.DueRequest) -> dict[str, int | str]:
    return ids(join_request_id=request.id, user_id=request.user_id, chat_id=request.chat_id)
