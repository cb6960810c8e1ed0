"""GET /api/v1/channels: which AdTarget channel (and event type) each Telegram channel is."""

from __future__ import annotations

import html
import logging

from bot.adtarget import AdTargetClient
from storage import channels
from storage.db import Database

log = logging.getLogger(__name__)


class ChannelSync:
    def __init__(self, client: AdTargetClient, db: Database) -> None:
        self._client = client
        self._db = db

    async def run(self) -> tuple[int, list[str]]:
        """Map our channels; returns (mapped, problems). Raises AdTargetError."""
        remote = {c.telegram_channel_id: c for c in await self._client.list_channels()}
        mapped, problems = 0, []
        for channel in await channels.list_all(self._db):
            found = remote.get(str(channel.chat_id))
            if found is None:
                if channel.active:
                    problems.append(f"{channel.title}: not among AdTarget's channels")
                continue
            await channels.set_adtarget_id(
                self._db, channel.chat_id, found.channel_id, found.event_type
            )
            mapped += 1
        log.info("AdTarget channels synced: %d mapped, %d not found", mapped, len(problems))
        return mapped, problems

    async def run_quietly(self) -> None:
        try:
            await self.run()
        except Exception as error:
            log.warning("AdTarget channel sync failed: %s", error)

    async def run_and_describe(self) -> str:
        try:
            mapped, problems = await self.run()
        except Exception as error:
            return f"Could not fetch AdTarget's channels: {html.escape(str(error))}"
        lines = [f"AdTarget channels synced: {mapped} mapped."]
        lines += [f"• {html.escape(p)}" for p in problems]
        if problems:
            lines.append("Add those channels to your AdTarget site, then /sync again.")
        return "\n".join(lines)
