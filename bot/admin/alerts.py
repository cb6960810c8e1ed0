"""What admins are told when something goes wrong, in one place: the texts and the
deduplication keys the notifier uses (one message per situation, see notifier.py)."""

from __future__ import annotations

import html

from bot.admin.notifier import Notifier
from bot.courier.verdicts import CourierAlerts
from bot.polling.reader import Unreadable


def pool_empty_alert(notifier: Notifier, chat_id: int, title: str) -> None:
    notifier.alert(
        f"pool-empty:{chat_id}",
        f"⚠️ No invite links left for <b>{html.escape(title)}</b> for 5 minutes: Telegram"
        " is limiting link creation. Visitors get a “try again” answer meanwhile.",
    )


def unreadable_alert(notifier: Notifier, found: list[Unreadable]) -> None:
    """One alert while updates keep coming that the bridge cannot read: what the first
    one lacked is usually what all of them lack."""
    first = found[0]
    notifier.alert(
        "unreadable-updates",
        f"⚠️ Telegram sent {len(found)} update(s) the bridge cannot read (update"
        f" {first.update_id}, {html.escape(first.kind)}: {html.escape(first.error)}).\n"
        "Each is kept and skipped; later updates are handled as usual. /outbox lists them."
        " An old self-hosted Bot API server (TELEGRAM_API_URL) is the usual cause.",
    )


def courier_alerts(notifier: Notifier) -> CourierAlerts:
    def paused(reason: str) -> None:
        notifier.alert(
            "courier-paused",
            f"🔴 Sending to AdTarget is paused: {html.escape(reason)}.\nJoins are still"
            " recorded and queued. Check ADTARGET_API_KEY (401) or your AdTarget billing"
            " (402); the bridge retries by itself.",
        )

    def parked(row_id: int, reason: str) -> None:
        notifier.alert(
            "rows-parked",
            # The reason says whether AdTarget refused it or it could not be sent at all.
            f"⚠️ Outbox row #{row_id} was parked: {html.escape(reason)}.\n"
            "See /outbox; /retry sends parked rows again once fixed.",
        )

    return CourierAlerts(
        paused=paused, resumed=lambda: notifier.resolved("courier-paused"), parked=parked
    )
