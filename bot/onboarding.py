"""The bot's own membership in channels: registered when made admin, inactive when
not, and the promoting admin told what to do next."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bot.events import EventType
from bot.joins import ChatRef, effective_event
from bot.notifier import Notifier
from bot.snippet import landing_snippet
from storage import channels
from storage.db import Database

log = logging.getLogger(__name__)

GRANT_INVITE = (
    "The bot needs the <b>Invite users via link</b> right to make personal links. In the"
    " channel: Manage channel → Administrators → {bot} → turn on “Invite users via link”."
)
PUBLIC_WARNING = (
    "⚠️ {title} is public (@{username}). Telegram apps often join public channels by"
    " username and drop the invite link, so those joins cannot be attributed. Make the"
    " channel private, or switch it to join requests: /mode {handle} request"
)


@dataclass(frozen=True, slots=True)
class BotMembership:
    chat: ChatRef
    is_admin: bool
    can_invite_users: bool
    changed_by: int | None


class Onboarding:
    def __init__(
        self,
        db: Database,
        notifier: Notifier,
        *,
        tracker_url: str,
        default_event: EventType,
        bot_name: Callable[[], str],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._tracker_url = tracker_url
        self._default_event = default_event
        self._bot_name = bot_name
        # The invite pool listens: a newly tracked channel needs its pool filled.
        self._on_change = on_change

    async def bot_status_changed(self, change: BotMembership) -> None:
        chat = change.chat
        before = await channels.get(self._db, chat.id)
        async with self._db.transaction() as conn:
            await channels.upsert(
                conn,
                chat.id,
                title=chat.title,
                username=chat.username,
                chat_type=chat.type,
                active=change.is_admin,
                can_invite_users=change.can_invite_users,
                promoted_by=change.changed_by if change.is_admin else None,
            )
        self._on_change()
        title = html.escape(chat.title or str(chat.id))
        handle = f"@{chat.username}" if chat.username else str(chat.id)
        if not change.is_admin:
            log.warning("bot is no longer admin of %d (%s): channel inactive", chat.id, chat.title)
            if before is not None and before.active:
                self._notifier.alert(
                    f"inactive:{chat.id}",
                    f"🔴 The bot is no longer an admin of <b>{title}</b>: no more invite links"
                    " are made there and its joins are not seen. Make the bot an admin again"
                    " to resume.",
                )
            return
        self._notifier.resolved(f"inactive:{chat.id}")
        channel = await channels.get(self._db, chat.id)
        assert channel is not None
        lines = [f"✅ <b>{title}</b> is now tracked."]
        if not change.can_invite_users:
            log.warning("bot is admin of %d without the right to invite users", chat.id)
            lines = [
                f"⚠️ <b>{title}</b>: the bot is admin but cannot make invite links.",
                GRANT_INVITE.format(bot=html.escape(self._bot_name())),
            ]
            self._notifier.alert(
                f"rights:{chat.id}",
                "\n".join(lines),
                extra_chats=[change.changed_by] if change.changed_by else [],
            )
            return
        self._notifier.resolved(f"rights:{chat.id}")
        event = effective_event(channel, self._default_event)
        lines += [
            f"Event reported for each join: <b>{html.escape(str(event))}</b> (/event to change)",
            f"Mode: <b>{channel.mode}</b> — "
            + ("personal single-use links" if channel.mode == "link" else "join requests")
            + " (/mode to change)",
        ]
        if chat.username:
            lines.append(PUBLIC_WARNING.format(title=title, username=chat.username, handle=handle))
        lines += [
            "",
            "Paste this on your landing page (it records the visit and puts the visitor's"
            " own link on the button):",
            f"<pre>{html.escape(landing_snippet(self._tracker_url, handle))}</pre>",
        ]
        log.info("channel %d (%s) tracked", chat.id, chat.title)
        if change.changed_by is not None:
            self._notifier.send(change.changed_by, "\n".join(lines))
        else:
            log.info("onboarding summary for %d not sent: unknown promoter", chat.id)
