"""/event: a channel's join event as its admins set and see it.

The rule (a Purchase has a value and currency) is bot/adtarget/events.py's `JoinEvent`;
this words it for the admin. `AdminCommands.set_event` calls these.
"""

from __future__ import annotations

import html

from bot.admin.gate import describe
from bot.adtarget.events import PURCHASE_NEEDS_VALUE, JoinEvent
from storage import channels
from storage.channels import Channel
from storage.db import Database

USAGE = (
    "Usage: /event &lt;channel&gt; &lt;Lead|Subscribe|CompleteRegistration|Custom:Name&gt;"
    " [&lt;value&gt; &lt;currency&gt;], or /event &lt;channel&gt; Purchase &lt;value&gt;"
    " &lt;currency&gt; (like 9.99 EUR)"
)


def refused(args: list[str], error: ValueError) -> str:
    """The reply to /event arguments `parse_join_event` refused; nothing was changed."""
    why = html.escape(str(error))
    if str(error) == PURCHASE_NEEDS_VALUE:
        # Only `<channel…> Purchase` gets here: parse_join_event refuses a missing
        # channel first, and a value given would have satisfied the rule.
        channel = html.escape(" ".join(args[:-1]))
        why = (
            "A Purchase needs a value and a currency, like"
            f" <code>/event {channel} Purchase 9.99 EUR</code>: ad platforms drop a Purchase"
            " without a value. The channel's event was not changed."
        )
    return f"{USAGE}\n{why}"


async def store(db: Database, channel: Channel, event: JoinEvent) -> str:
    """Set the channel's join event (a value it had before goes unless given
    again) and return the reply."""
    await channels.set_event_type(
        db, channel.chat_id, str(event.event), value=event.value, currency=event.currency
    )
    worth = f", worth <b>{html.escape(event.worth)}</b> each" if event.worth else ""
    return (
        f"{describe(channel)}: joins from now on are reported as"
        f" <b>{html.escape(str(event.event))}</b>{worth}."
    )


def listed(event: JoinEvent) -> str:
    """The event as /channels shows it: `Purchase, value 9.99 EUR`."""
    value = f", value {event.worth}" if event.worth else ""
    return html.escape(f"{event.event}{value}")
