"""/stay: each channel's stay signal, shown and changed by its admins.

`/stay <channel> <days> <event>` turns it on, `/stay <channel> off`
turns it off, `/stay` alone lists the setting of every channel the admin
may see. Who may do what is the same as for /stats (`AdminCommands.allowed`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from bot.admin.commands import REFUSAL, AdminCommands, Reply
from bot.admin.gate import describe, pick_channel
from bot.adtarget.events import EventType
from storage import stay
from storage.channels import Channel
from storage.db import Database

MAX_DAYS = 365
USAGE = (
    "Usage: /stay &lt;channel&gt; &lt;days&gt;"
    " &lt;Lead|Subscribe|CompleteRegistration|Custom:Name&gt;, or /stay &lt;channel&gt; off"
    " (/stay alone lists every channel's setting)"
)


@dataclass(frozen=True, slots=True)
class StayChange:
    channel: str  # the channel as the admin named it
    days: int | None  # None: off
    event: EventType | None


def parse_change(args: list[str]) -> StayChange | str:
    """The arguments after the channel; a message saying what is wrong otherwise.

    A channel may be named by a title of several words, and a custom event name may
    hold spaces, so the event is found first: from the word starting with
    `Custom:`, else the last word; the days come just before it.
    """
    if args and args[-1].casefold() == "off":
        if len(args) == 1:
            return "Name the channel to turn off, e.g. /stay @mychannel off."
        return StayChange(" ".join(args[:-1]), None, None)
    start = next(
        (i for i, word in enumerate(args) if i > 0 and word.casefold().startswith("custom:")),
        len(args) - 1,
    )
    if len(args) < 3 or start < 2:
        return (
            "Give the channel, the number of days and the event,"
            " e.g. /stay @mychannel 7 Custom:Retained7d."
        )
    days_text = args[start - 1]
    # isdigit() alone accepts "²" and "①", which int() refuses; three digits at most
    # keep int() from a many-thousand-digit string.
    ascii_number = days_text.isascii() and days_text.isdigit() and len(days_text) <= 3
    if not ascii_number or not 1 <= int(days_text) <= MAX_DAYS:
        return (
            f"The number of days must be a whole number from 1 to {MAX_DAYS},"
            f" not “{html.escape(days_text)}”."
        )
    try:
        event = EventType.parse(" ".join(args[start:]))
    except ValueError as error:
        return f"The event: {html.escape(str(error))}."
    if event.name == "Purchase":
        return (
            "The event cannot be Purchase: AdTarget needs a value and currency for it,"
            " and the stay signal's event has none. Use Lead, Subscribe, CompleteRegistration"
            " or Custom:Name."
        )
    return StayChange(" ".join(args[: start - 1]), int(days_text), event)


class StayCommand:
    def __init__(self, db: Database, commands: AdminCommands) -> None:
        self._db = db
        self._commands = commands

    async def stay(self, user_id: int, args: list[str]) -> Reply:
        mine = await self._commands.allowed(user_id)
        if mine is None:
            return Reply(REFUSAL)
        if not args:
            return await self._listing(mine)
        change = parse_change(args)
        if isinstance(change, str):
            return Reply(f"{USAGE}\n{change}")
        found = pick_channel(change.channel, mine)
        if isinstance(found, str):
            return Reply(f"{USAGE}\n{found}")
        await stay.set_setting(
            self._db, found.chat_id, change.days, str(change.event) if change.event else None
        )
        waiting = (await stay.counts(self._db, [found.chat_id])).get(found.chat_id, {})
        scheduled = waiting.get("pending", 0)
        earlier = (
            f" {scheduled} check(s) already scheduled keep their earlier setting."
            if scheduled
            else ""
        )
        if change.days is None or change.event is None:
            return Reply(f"{describe(found)}: stay signal off for joins from now on.{earlier}")
        return Reply(
            f"{describe(found)}: an attributed joiner still in the channel {change.days}"
            f" day(s) after joining gets <b>{html.escape(str(change.event))}</b>. This applies"
            f" to joins from now on; joins recorded before are not checked.{earlier}"
        )

    async def _listing(self, mine: list[Channel]) -> Reply:
        if not mine:
            return Reply(
                "No channels yet. Add the bot to a channel as an admin with the"
                " <b>Invite users via link</b> right."
            )
        ids = [c.chat_id for c in mine]
        settings = await stay.settings(self._db, ids)
        counts = await stay.counts(self._db, ids)
        lines = ["<b>Stay signal</b>"]
        for channel in mine:
            setting = settings.get(channel.chat_id)
            if setting is None or setting.days is None:
                lines.append(f"\n{describe(channel)}: off")
            else:
                lines.append(
                    f"\n{describe(channel)}: {setting.days} day(s) →"
                    f" <b>{html.escape(setting.event_type or '')}</b>"
                )
            by_state = counts.get(channel.chat_id, {})
            if by_state:
                lines.append(
                    f"  checks: {by_state.get('pending', 0)} waiting,"
                    f" {by_state.get('sent', 0)} stayed (event queued),"
                    f" {by_state.get('left', 0)} left, {by_state.get('failed', 0)} failed"
                )
        lines.append(
            "\nSet with /stay &lt;channel&gt; &lt;days&gt; &lt;event&gt;,"
            " or /stay &lt;channel&gt; off."
        )
        return Reply("\n".join(lines))
