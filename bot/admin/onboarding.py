"""The bot's own membership in channels: registered when made admin (or when an
admin names the channel with /track), inactive when not, and the promoting admin
told what to do next.

Only such chats are tracked. Telegram also sends updates from chats the bot was
never set up in (a channel's discussion group, any group that made it admin);
those are ignored, so no links are minted and no joins counted there.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import AiogramError, TelegramAPIError
from aiogram.types import ChatMemberAdministrator, ChatMemberOwner

from bot.admin.gate import AdminGate
from bot.admin.notifier import Notifier
from bot.adtarget.events import EventType, effective_event
from bot.invites.pool import InvitePool, PoolEmpty
from bot.joins.recorder import ChatRef
from bot.tracker.snippet import CLICK_WAIT_MS, landing_snippet, public_link
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


TRACK_USAGE = (
    "Usage: /track @channel or /track -100… (the channel's id). The bot must already be"
    " an admin there."
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
        bot: Bot,
        db: Database,
        gate: AdminGate,
        notifier: Notifier,
        *,
        tracker_url: str,
        default_event: EventType,
        bot_name: Callable[[], str],
        pool: InvitePool,
    ) -> None:
        self._bot = bot
        self._db = db
        self._gate = gate
        self._notifier = notifier
        self._tracker_url = tracker_url
        self._default_event = default_event
        self._bot_name = bot_name
        # Woken on every change (a newly tracked channel needs its pool filled), and
        # asked for the channel's fallback link for the snippet.
        self._pool = pool

    async def bot_status_changed(self, change: BotMembership) -> None:
        """Track or untrack the chat, and tell the owner what changed.

        Telegram sends my_chat_member for every edit of the bot's rights. The full
        onboarding (settings and the landing snippet) goes out once per channel,
        the first time the bot is an admin there with the invite right; losing or
        regaining that right, being removed or coming back each get a short note;
        any other rights edit gets nothing."""
        chat = change.chat
        before = await channels.get(self._db, chat.id)
        if before is None and not change.is_admin:
            # Added as a plain member, or removed from a chat it never administered:
            # only chats where the bot was promoted are tracked.
            log.info("bot is a non-admin member of %d (%s): not tracked", chat.id, chat.title)
            return
        onboard = (
            change.is_admin
            and change.can_invite_users
            and (before is None or before.onboarded_at is None)
        )

        async with self._db.transaction() as tx:
            await channels.upsert_in(
                tx,
                chat.id,
                title=chat.title,
                username=chat.username,
                chat_type=chat.type,
                active=change.is_admin,
                can_invite_users=change.can_invite_users,
                promoted_by=change.changed_by if change.is_admin else None,
            )
            if onboard:
                await channels.mark_onboarded_in(tx, chat.id)
        self._pool.wake()
        title = html.escape(chat.title or str(chat.id))
        was_tracking = before is not None and before.active
        if not change.is_admin:
            log.warning("bot is no longer admin of %d (%s): channel inactive", chat.id, chat.title)
            if was_tracking:
                self._notifier.alert(
                    f"inactive:{chat.id}",
                    f"🔴 The bot is no longer an admin of <b>{title}</b>: no more invite links"
                    " are made there and its joins are not seen. Make the bot an admin again"
                    " to resume.",
                )
            return
        self._notifier.resolved(f"inactive:{chat.id}")
        if not change.can_invite_users:
            if was_tracking and before is not None and not before.can_invite_users:
                return  # another rights edit; the missing right was reported already
            log.warning("bot is admin of %d without the right to invite users", chat.id)
            self._notifier.alert(
                f"rights:{chat.id}",
                f"⚠️ <b>{title}</b>: the bot is admin but cannot make invite links.\n"
                + GRANT_INVITE.format(bot=html.escape(self._bot_name())),
                extra_chats=[change.changed_by] if change.changed_by else [],
            )
            return
        self._notifier.resolved(f"rights:{chat.id}")
        if onboard:
            channel = await channels.get(self._db, chat.id)
            assert channel is not None
            self._to_promoter(change, await self._onboarding(channel, chat, title))
        elif not was_tracking:
            log.info("channel %d (%s) tracked again", chat.id, chat.title)
            self._to_promoter(change, f"✅ <b>{title}</b> is tracked again.")
        elif before is not None and not before.can_invite_users:
            log.info("bot may invite users in %d again", chat.id)
            self._to_promoter(change, f"✅ <b>{title}</b>: the bot can make invite links again.")

    async def track(self, user_id: int, wanted: str) -> str:
        """/track @channel (or -100… id): track a chat where the bot is already an
        admin but Telegram's my_chat_member never reached the bridge (it was promoted
        while the bridge was down for more than a day, or by an older deployment).
        Telegram is asked, never trusted blindly: the chat must exist, the bot must be
        its admin, and the user one of ADMIN_IDS or an admin there."""
        wanted = wanted.strip()
        if not (wanted.startswith("@") or wanted.lstrip("-").isdigit()):
            return TRACK_USAGE
        target: int | str = wanted if wanted.startswith("@") else int(wanted)
        try:
            chat = await self._bot.get_chat(target)
        except (TelegramAPIError, AiogramError) as error:
            log.info("getChat(%s) for /track failed: %s", wanted, error)
            why = html.escape(str(error))
            return f"Telegram does not show {html.escape(wanted)} to the bot: {why}"
        gate = self._gate
        if not (gate.is_owner(user_id) or await gate.is_channel_admin(user_id, chat.id)):
            return "Only ADMIN_IDS and that chat's admins may track it."
        if chat.type not in ("channel", "supergroup"):
            return "Only channels (and supergroups) can be tracked."
        try:
            me = await self._bot.me()
            member = await self._bot.get_chat_member(chat.id, me.id)
        except (TelegramAPIError, AiogramError) as error:
            log.info("getChatMember(%d, bot) for /track failed: %s", chat.id, error)
            return f"Telegram did not say what the bot is in that chat: {html.escape(str(error))}"
        ref = ChatRef(id=chat.id, title=chat.title or "", username=chat.username, type=chat.type)
        title = html.escape(ref.title or str(ref.id))
        if not isinstance(member, ChatMemberAdministrator | ChatMemberOwner):
            return f"The bot is not an admin of <b>{title}</b>. Make it one; that tracks it too."
        before = await channels.get(self._db, chat.id)
        can_invite = isinstance(member, ChatMemberOwner) or member.can_invite_users
        await self.bot_status_changed(BotMembership(ref, True, can_invite, changed_by=user_id))
        if before is not None and before.active:
            return f"<b>{title}</b> is already tracked."
        return f"<b>{title}</b> is tracked from now on."

    def _to_promoter(self, change: BotMembership, text: str) -> None:
        if change.changed_by is not None:
            self._notifier.send(change.changed_by, text)
        else:
            log.info("message about %d not sent: unknown promoter", change.chat.id)

    async def _onboarding(self, channel: channels.Channel, chat: ChatRef, title: str) -> str:
        handle = f"@{chat.username}" if chat.username else str(chat.id)
        event = effective_event(channel, self._default_event)
        lines = [
            f"✅ <b>{title}</b> is now tracked.",
            f"Event reported for each join: <b>{html.escape(str(event))}</b> (/event to change)",
            f"Mode: <b>{channel.mode}</b> — "
            + ("personal single-use links" if channel.mode == "link" else "join requests")
            + " (/mode to change)",
        ]
        if chat.username:
            lines.append(PUBLIC_WARNING.format(title=title, username=chat.username, handle=handle))
        way_in, about_it = await self._way_in(channel, chat, handle)
        lines += [
            "",
            "Paste this on your landing page (it records the visit and puts the visitor's"
            " own link on the button):",
            f"<pre>{html.escape(landing_snippet(self._tracker_url, handle, way_in))}</pre>",
            about_it,
        ]
        log.info("channel %d (%s) tracked", chat.id, chat.title)
        return "\n".join(lines)

    async def _way_in(
        self, channel: channels.Channel, chat: ChatRef, handle: str
    ) -> tuple[str | None, str]:
        """The snippet's fallback link, and the line telling the owner what it is.

        Only links that stay valid can be pasted into a page: a public channel's
        own link (nobody can revoke it), else the channel's fallback link, the one
        the tracker also hands out when it has no personal link (kept, or minted
        now). Telegram refusing to mint just now leaves None: the button then goes
        through the tracker until the owner puts that link in."""
        if chat.username:
            link = public_link(chat.username)
            return link, _href_is(f"the channel's public link {html.escape(link)}", "organic")
        try:
            link = (await self._pool.fallback(channel)).url
        except PoolEmpty:
            return None, (
                "⚠️ Telegram gave no fallback link just now, so this button goes through the"
                f" tracker and fails while it is down. Send /link {handle} fallback and put"
                " the link it answers in the button's href."
            )
        about = _href_is(f"the channel's fallback link {html.escape(link)}", "“fallback”")
        return link, (
            f"{about} Should you revoke it in Telegram, /link {handle} fallback gives its"
            " replacement."
        )


def _href_is(link: str, counted_as: str) -> str:
    return (
        f"The button's href is {link}; the script puts the visitor's own link there when"
        " the tracker answers. With the tracker down or slower than"
        f" {CLICK_WAIT_MS / 1000:g} s, the visitor still joins by that link ({counted_as}"
        " in /stats)."
    )
