"""GET /api/v1/channels: which AdTarget channel (and event type) each Telegram channel is."""

from __future__ import annotations

import html
import logging

from bot.adtarget.client import AdTargetClient
from bot.adtarget.events import refusal
from bot.logs import ids
from storage import channels
from storage.db import Database

log = logging.getLogger(__name__)


class ChannelSync:
    def __init__(self, client: AdTargetClient, db: Database) -> None:
        self._client = client
        self._db = db

    async def run(self) -> tuple[int, list[str]]:
        """Map our channels; returns (mapped, problems). Raises AdTargetError.

        AdTarget's event type for a channel is taken under the rule /event
        follows (bot/adtarget/events.py): a Purchase the channel has no value for is not
        stored, the one before stays, and the problem says why.
        """
        remote = {c.telegram_channel_id: c for c in await self._client.list_channels()}
        mapped, problems = 0, []
        for channel in await channels.list_all(self._db):
            found = remote.get(str(channel.chat_id))
            if found is None:
                if channel.active:
                    problems.append(
                        f"{channel.title}: not among AdTarget's channels; add it to your"
                        " AdTarget site, then /sync again."
                    )
                continue
            event_type = found.event_type
            if (why := refusal(event_type, channel)) is not None:
                # The type before stays, unless it breaks the same rule (a row from
                # before the rule): then none, and the joins get DEFAULT_EVENT_TYPE.
                kept = channel.adtarget_event_type
                event_type = kept if refusal(kept, channel) is None else None
                log.warning(
                    "channel %d: AdTarget's event type %r not taken (%s); keeping %r",
                    channel.chat_id,
                    found.event_type,
                    why,
                    event_type,
                    extra=ids(chat_id=channel.chat_id),
                )
                handle = f"@{channel.username}" if channel.username else str(channel.chat_id)
                problems.append(
                    f"{channel.title}: AdTarget says its event is {found.event_type}, but {why};"
                    f" its joins are still reported as before. Set a value with /event {handle}"
                    f" {found.event_type} <value> <currency>, or change the event in AdTarget."
                )
            await channels.set_adtarget_id(self._db, channel.chat_id, found.channel_id, event_type)
            mapped += 1
        log.info("AdTarget channels synced: %d mapped, %d problem(s)", mapped, len(problems))
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
        return "\n".join(lines)
