"""Privacy: personal fields cleared after RETENTION_DAYS, and forgetting a person.

Visitor IPs, User-Agents and click ids are personal data. `PrivacySweeper`
clears them from visits and finished outbox rows older than RETENTION_DAYS (at
start, then hourly; the rows and so the /stats counts stay). `forget` (the
`/forget` command and `joinbridge forget`) erases one Telegram user's rows.
The SQL is in storage/privacy.py.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from bot.waiting import wait_any
from storage import privacy
from storage.db import Database
from storage.privacy import Forgotten

log = logging.getLogger(__name__)

DAY = 86400.0
SWEEP_EVERY = 3600.0
# Rows per transaction: the sweep never holds the writer long enough for a
# join or a visit to notice.
SWEEP_BATCH = 500

FORGET_USAGE = "Usage: /forget &lt;telegram-user-id&gt; (a number, as in the user's profile)"
OWNERS_ONLY = "Only the bridge's admins (ADMIN_IDS) can do that."


def parse_user_id(text: str) -> int:
    """A Telegram user id as typed by a person; ValueError says what is wrong."""
    cleaned = text.strip()
    if not cleaned.isdigit() or not cleaned.isascii():
        raise ValueError(f"{cleaned!r} is not a Telegram user id (a positive number)")
    value = int(cleaned)
    if value <= 0 or value >= 2**53:
        raise ValueError(f"{cleaned} is out of the range of Telegram user ids")
    return value


def describe(forgotten: Forgotten) -> list[str]:
    """One line per table: rows deleted, then rows kept but unlinked from the person."""
    lines = [f"{table}: {count} row(s) deleted" for table, count in forgotten.deleted.items()]
    lines += [
        f"{table}: {count} row(s) kept, reference to the person removed"
        for table, count in forgotten.unlinked.items()
    ]
    return lines


class Scrub(Protocol):
    async def __call__(self, db: Database, *, before: float, limit: int) -> int: ...


@dataclass(frozen=True, slots=True)
class SweepResult:
    visits: int
    outbox: int


class PrivacySweeper:
    """Clears personal fields of visits and finished outbox rows older than RETENTION_DAYS."""

    def __init__(
        self,
        db: Database,
        retention_days: int,
        *,
        every: float = SWEEP_EVERY,
        batch: int = SWEEP_BATCH,
    ) -> None:
        self._db = db
        self.retention_days = retention_days
        self._every = every
        self._batch = batch

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep at start, then every hour, until `stop`."""
        while not stop.is_set():
            try:
                await self.sweep_once()
            except Exception:
                # The next sweep catches up; nothing here is urgent to the minute.
                log.exception("privacy sweep failed; trying again in %.0f s", self._every)
            await wait_any(stop, timeout=self._every)

    async def sweep_once(self, *, now: float | None = None) -> SweepResult:
        before = (time.time() if now is None else now) - self.retention_days * DAY
        visits = await self._drain(privacy.scrub_visits, before)
        rows = await self._drain(privacy.scrub_outbox, before)
        if visits or rows:
            log.info(
                "privacy: personal fields cleared from %d visit(s) and %d outbox row(s)"
                " older than %d days",
                visits,
                rows,
                self.retention_days,
            )
        return SweepResult(visits, rows)

    async def _drain(self, scrub: Scrub, before: float) -> int:
        total = 0
        while True:
            count = await scrub(self._db, before=before, limit=self._batch)
            total += count
            if count < self._batch:
                return total
            await asyncio.sleep(0)  # let waiting writers in between batches


async def forget(db: Database, user_id: int) -> Forgotten:
    forgotten = await privacy.forget_user(db, user_id)
    # The person's id is exactly what must not be kept: the log says how much went.
    log.info("forget: %d row(s) erased or unlinked for one Telegram user", forgotten.total)
    return forgotten


class ForgetCommand:
    """`/forget <telegram-user-id>` for ADMIN_IDS: erasing is bridge-wide, so a
    channel's own admins may not."""

    def __init__(self, db: Database, admin_ids: Iterable[int]) -> None:
        self._db = db
        self._admin_ids = frozenset(admin_ids)

    async def forget(self, requester_id: int, args: list[str]) -> str:
        """The HTML reply to `/forget`."""
        if requester_id not in self._admin_ids:
            return OWNERS_ONLY
        if len(args) != 1:
            return FORGET_USAGE
        try:
            user_id = parse_user_id(args[0])
        except ValueError as error:
            return f"{FORGET_USAGE}\n{html.escape(str(error))}"
        log.info("forget requested by admin %d", requester_id, extra={"user_id": requester_id})
        forgotten = await forget(self._db, user_id)
        if not forgotten.total:
            return f"Nothing stored about user {user_id}."
        lines = [f"Forgot user {user_id}:"] + [f"• {line}" for line in describe(forgotten)]
        return "\n".join(lines)
