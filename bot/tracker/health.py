"""What `/healthz` reports: database, polling, courier, outbox and invite pools."""

from __future__ import annotations

import logging
import time
from typing import Any

from bot.cluster.roles import Election
from bot.courier.service import Courier
from bot.invites.pool import InvitePool
from bot.polling.batches import PollerStats
from storage import inbox, outbox
from storage.db import Database, schema_version

log = logging.getLogger(__name__)


class Health:
    def __init__(
        self,
        db: Database,
        reads: Database,
        poller: PollerStats,
        courier: Courier,
        pool: InvitePool,
        election: Election,
        *,
        courier_enabled: bool,
    ) -> None:
        self._db = db
        # Counts go to the read-only connection: /healthz is public, and a count
        # over a large outbox must not hold the writer (and ingest) meanwhile.
        self._reads = reads
        self._poller = poller
        self._courier = courier
        self._pool = pool
        self._election = election
        self._courier_enabled = courier_enabled

    async def report(self) -> dict[str, Any]:
        now = time.time()
        try:
            version = await schema_version(self._db)
            counts = await outbox.counts(self._reads)
            failed_updates = await inbox.failed_count(self._reads)
            unreadable = await inbox.unreadable_summary(self._reads)
            pools = await self._pool.states()
        except Exception as error:
            log.exception("healthz: database check failed")
            return {"status": "failing", "database": {"ok": False, "error": str(error)}}
        last_poll = self._poller.last_poll_ok_at
        pause = self._courier.pause
        if not self._courier_enabled:
            courier: dict[str, Any] = {"state": "disabled"}
        elif pause is not None:
            courier = {"state": "paused", "reason": pause.reason, "since": pause.since}
        else:
            courier = {"state": "running"}
        empty_pools = [p for p in pools if p.target and p.size == 0]
        # A standby does not poll (the leader does): its getUpdates age says nothing.
        leading = self._election.is_leader
        cluster = self._election.status()
        degraded = (
            (leading and pause is not None)
            or (leading and (last_poll is None or now - last_poll > 120))
            or bool(empty_pools)
            or counts.parked > 0
        )
        return {
            "status": "degraded" if degraded else "ok",
            "database": {"ok": True, "schemaVersion": version},
            # Which process this is, and who leads (several processes on PostgreSQL).
            "cluster": {
                "role": cluster.role,
                "identity": cluster.identity,
                "leaderSince": None
                if cluster.leader_since is None
                else cluster.leader_since.isoformat(),
                "elections": cluster.elections,
                "leader": None if cluster.leader is None else cluster.leader.identity,
            },
            "telegram": {
                "lastGetUpdatesAt": last_poll,
                "secondsSinceLastGetUpdates": None
                if last_poll is None
                else round(now - last_poll, 1),
                "updatesReceived": self._poller.received,
                "updatesFailed": failed_updates,
                # Kept and skipped: the bridge goes on, an admin should look.
                "updatesUnreadable": unreadable.count,
                "lastUnreadable": None
                if unreadable.latest is None
                else dict(zip(("updateId", "kind", "error"), unreadable.latest, strict=True)),
            },
            "courier": courier,
            "outbox": {
                "pending": counts.pending,
                "sending": counts.sending,
                "delivered": counts.delivered,
                "parked": counts.parked,
                "oldestWaitingSeconds": None
                if counts.oldest_pending_at is None
                else round(now - counts.oldest_pending_at, 1),
            },
            "invitePools": [
                {
                    "channelId": str(p.chat_id),
                    "title": p.title,
                    "mode": p.mode,
                    "size": p.size,
                    "target": p.target,
                }
                for p in pools
            ],
            "telegramWaitSeconds": round(self._pool.telegram_wait(), 1),
        }
