"""/chart [channel] [30d|90d]: a picture of joins per day, as a photo.

Who may see which channel is as for /stats (`AdminCommands.allowed`, `pick_channel`):
an admin charts only their own channels, a stranger gets the refusal. Without a
channel the chart sums every channel the admin may see. The picture is drawn in a
worker thread (bot/admin/chart.py), so the event loop keeps serving updates meanwhile.
"""

from __future__ import annotations

import asyncio
import html
import time
from dataclasses import dataclass

from bot.admin import chart
from bot.admin.commands import REFUSAL, AdminCommands, Reply
from bot.admin.gate import pick_channel
from storage.channels import Channel
from storage.daily import Day, daily, utc_day
from storage.db import Database

PERIODS = {"30d": 30, "90d": 90}
DEFAULT_PERIOD = "30d"
USAGE = "Usage: /chart [channel] [30d|90d] — joins per day as a picture (default: 30d)"
NOTHING_YET = (
    "Nothing to draw{scope}: no joins or leaves in the last {days} days (UTC)."
    " /stats shows visits and links."
)
CAPTION_TITLES = 900  # Telegram allows 1,024 characters in a caption


@dataclass(frozen=True, slots=True)
class Photo:
    png: bytes
    caption: str  # HTML


def parse_period(args: list[str]) -> tuple[list[str], str] | None:
    """(the channel's words, the period) from /chart's arguments; None when the last
    word is a period /chart does not draw (e.g. /stats's "7d" or "all")."""
    if args and args[-1].lower() in PERIODS:
        return args[:-1], args[-1].lower()
    if args and _looks_like_period(args[-1]):
        return None
    return args, DEFAULT_PERIOD


def _looks_like_period(word: str) -> bool:
    folded = word.lower()
    return folded in ("today", "all") or (folded.endswith("d") and folded[:-1].isdigit())


class ChartCommand:
    def __init__(self, db: Database, commands: AdminCommands) -> None:
        self._db = db
        self._commands = commands

    async def chart(self, user_id: int, args: list[str]) -> Photo | Reply:
        mine = await self._commands.allowed(user_id)
        if mine is None:
            return Reply(REFUSAL)
        parsed = parse_period(args)
        if parsed is None:
            return Reply(USAGE)
        words, period = parsed
        channels = mine
        if words:
            found = pick_channel(" ".join(words), mine)
            if isinstance(found, str):
                return Reply(f"{USAGE}\n{found}")
            channels = [found]
        if not channels:
            return Reply("No channels yet: there is nothing to chart.")
        return await self.draw(channels, PERIODS[period], time.time())

    async def draw(self, channels: list[Channel], days: int, now: float) -> Photo | Reply:
        today = utc_day(now)
        series = await daily(self._db, [c.chat_id for c in channels], today - days + 1, today)
        scope = f" for {html.escape(channels[0].title)}" if len(channels) == 1 else ""
        if not any(day.joins or day.leaves for day in series):
            return Reply(NOTHING_YET.format(days=days, scope=scope))
        label = f"last {days} days"
        png = await asyncio.to_thread(chart.render, series, label)
        return Photo(png, _caption(channels, label, series))


def _caption(channels: list[Channel], label: str, series: list[Day]) -> str:
    if len(channels) == 1:
        title = channels[0].title
    else:
        title = f"{len(channels)} channels: " + ", ".join(c.title for c in channels)
        if len(title) > CAPTION_TITLES:
            title = title[: CAPTION_TITLES - 1] + "…"
    joins = sum(d.joins for d in series)
    through = sum(d.joins_through_links for d in series)
    share = f"{round(100 * through / joins)}%" if joins else "–"
    return (
        f"<b>{html.escape(title)}</b> · {label} (UTC)\n"
        f"Joins {joins:,}, through your links {share} · leaves"
        f" {sum(d.leaves for d in series):,}"
    )
