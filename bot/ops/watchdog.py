"""Degraded states watched in the background: Telegram not polled, the disk filling up.

Neither stops the bridge, and neither makes `/healthz` fail on its own account
except the disk (then the tracker cannot take visits): they are alerts to the
admins (one per situation, see notifier.py) and metrics. The courier's pause is
alerted by the courier itself (alerts.courier_alerts).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bot.admin.notifier import Notifier
from bot.polling.batches import PollerStats
from bot.waiting import wait_any

log = logging.getLogger(__name__)

CHECK_EVERY = 10.0  # seconds, or a quarter of poll_alert_after when that is shorter


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    # getUpdates unanswered this long (Telegram down, the token polled elsewhere, a
    # network cut) is worth an admin's look; blips of a minute are not.
    poll_alert_after: float = 300.0
    # Below this much free space where the database lives the tracker refuses new
    # visits (503), so an anonymous flood cannot fill the disk under the joins:
    # those keep being recorded, they are few and they are what the bridge is for.
    min_free_bytes: int = 200 * 1024 * 1024


class Watchdog:
    def __init__(
        self,
        database_path: Path,
        poller: PollerStats,
        notifier: Notifier,
        config: WatchdogConfig,
    ) -> None:
        self._database_dir = database_path.resolve().parent
        self._poller = poller
        self._notifier = notifier
        self._config = config
        self._started = time.time()
        self.free_bytes: int | None = None  # at the last check
        self.disk_low = False
        self.polling_late = False
        self.check_disk()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.check_disk()
            self.check_polling()
            await wait_any(stop, timeout=min(CHECK_EVERY, self._config.poll_alert_after / 4))

    def check_disk(self) -> None:
        try:
            free = shutil.disk_usage(self._database_dir).free
        except OSError as error:
            log.warning("cannot read free disk space of %s: %s", self._database_dir, error)
            return
        self.free_bytes = free
        low = free < self._config.min_free_bytes
        if low and not self.disk_low:
            log.error(
                "free disk space %d MB is under %d MB: the tracker refuses new visits",
                free // 2**20,
                self._config.min_free_bytes // 2**20,
            )
        elif self.disk_low and not low:
            log.info("free disk space back to %d MB: visits accepted again", free // 2**20)
            self._notifier.resolved("disk-low")
        self.disk_low = low
        if low:
            self._notifier.alert(
                "disk-low",
                f"🔴 Only {free // 2**20} MB free where the database lives: the tracker"
                " refuses new visits until there is more. Joins are still recorded and"
                " conversions sent.",
            )

    def check_polling(self) -> None:
        last = self._poller.last_poll_ok_at
        since = time.time() - (last if last is not None else self._started)
        late = since > self._config.poll_alert_after
        if late:
            self._notifier.alert(
                "telegram-not-polled",
                f"⚠️ Telegram has not answered getUpdates for {since / 60:.0f} min: joins"
                " wait at Telegram (it keeps them 24 h). See the bridge's log for why.",
            )
        elif self.polling_late:
            self._notifier.resolved("telegram-not-polled")
        self.polling_late = late
