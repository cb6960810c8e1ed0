"""The admin commands' logic: each returns the HTML reply (and buttons) to send.

Handlers parse the command and call one method here; nothing in this module
talks to Telegram except through the services it is given.
"""

from __future__ import annotations

import html
import logging
import re
import time
from dataclasses import dataclass

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.admin import event_command
from bot.admin.gate import AdminGate, describe, pick_channel
from bot.admin.stats import PERIODS, period_start, render
from bot.adtarget.events import EventType, effective_event, parse_join_event
from bot.courier.service import Courier
from bot.invites.minter import InviteMinter
from bot.invites.pool import InvitePool
from storage import channels, inbox, invite_links, outbox
from storage.channels import Channel
from storage.db import Database
from storage.stats import channel_stats

log = logging.getLogger(__name__)

REFUSAL = "Sorry, this bot only answers the admins of the channels it tracks."
OWNERS_ONLY = "Only the bridge's admins (ADMIN_IDS) can do that."
NOT_YET_ADMIN = "If you run this bridge, put that id in ADMIN_IDS in its .env and restart it."

HELP = """<b>Joinbridge</b> reports the people who join your channels through your landing \
page to AdTarget, so your ads learn which clicks became subscribers.

<b>Commands</b>
/stats [channel] [today|7d|30d|all] — visits, links, joins, conversions
/chart [channel] [30d|90d] — joins per day by kind, leaves and attribution, as a picture
/channels — tracked channels, mode, event, rights
/track &lt;@channel|-100…&gt; — track a channel where the bot already is admin
/event &lt;channel&gt; &lt;Lead|Subscribe|CompleteRegistration|Custom:Name&gt; — what joins \
are reported as
/event &lt;channel&gt; Purchase &lt;value&gt; &lt;currency&gt; — a Purchase with its value, \
like 9.99 EUR
/mode &lt;channel&gt; &lt;link|request&gt; — single-use links or join requests
/link &lt;channel&gt; &lt;campaign&gt; — a named link for a post, partner or QR code
/links — campaign links and their joins
/outbox — what waits to be sent to AdTarget
/retry &lt;id|all&gt; — send parked rows again
/pause, /resume — stop or restart sending to AdTarget
/sync — fetch the channel mapping from AdTarget (ADMIN_IDS only)
/lead &lt;telegram-user-id&gt; — what AdTarget and the bridge hold for one person
/fire &lt;telegram-user-id&gt; &lt;event&gt; [value currency] — a follow-up event for a lead
/value &lt;telegram-user-id&gt; &lt;conversion-id&gt; &lt;value&gt; &lt;currency&gt;
/stay [&lt;channel&gt; &lt;days&gt; &lt;event&gt;|off] — an event for joiners who stay
/forget &lt;telegram-user-id&gt; — erase a person's joins and visits (ADMIN_IDS only)

A channel is named by @username, its -100… id, or the start of its title."""

COMMANDS = {
    "start": "What this bot does",
    "help": "Commands",
    "stats": "Visits, joins and conversions",
    "chart": "Joins per day as a picture",
    "channels": "Tracked channels",
    "track": "Track a channel the bot is admin of",
    "event": "Set a channel's event type",
    "mode": "Personal links or join requests",
    "link": "Create a campaign link",
    "links": "Campaign links and their joins",
    "outbox": "What waits to be sent",
    "retry": "Send parked rows again",
    "pause": "Stop sending to AdTarget",
    "resume": "Start sending again",
    "sync": "Fetch channels from AdTarget",
    "lead": "What AdTarget and the bridge hold for a user",
    "fire": "A follow-up event for a lead",
    "value": "A value for a conversion",
    "stay": "An event for joiners who stay",
    "forget": "Erase one user's data",
}


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    buttons: InlineKeyboardMarkup | None = None


class AdminCommands:
    def __init__(
        self,
        db: Database,
        gate: AdminGate,
        courier: Courier,
        pool: InvitePool,
        minter: InviteMinter,
        default_event: EventType,
    ) -> None:
        self._db = db
        self._gate = gate
        self._courier = courier
        self._pool = pool
        self._minter = minter
        self._default_event = default_event

    async def start(self, user_id: int) -> Reply:
        """/start answers anyone with their own numeric id: a new owner needs it for
        ADMIN_IDS, and Telegram's apps show it nowhere."""
        yours = f"Your Telegram user id is <code>{user_id}</code>."
        if await self.allowed(user_id) is None:
            return Reply(f"{yours}\n{REFUSAL}\n{NOT_YET_ADMIN}")
        return Reply(f"{yours}\n\n{HELP}")

    async def unknown_message(self, user_id: int, text: str | None) -> Reply:
        """The answer to a message no command took."""
        if await self.allowed(user_id) is None:
            return Reply(REFUSAL)
        word = (text or "").split(maxsplit=1)[0] if (text or "").startswith("/") else None
        if word:
            return Reply(f"I don't know {html.escape(word)}. /help lists the commands.")
        return Reply("I answer commands only. /help lists them.")

    async def allowed(self, user_id: int) -> list[Channel] | None:
        """The user's channels; None when the user may not use the bot at all."""
        mine = await self._gate.channels_for(user_id)
        if mine or self._gate.is_owner(user_id):
            return mine
        return None

    async def stats(self, user_id: int, args: list[str]) -> Reply:
        mine = await self.allowed(user_id)
        if mine is None:
            return Reply(REFUSAL)
        period = "7d"
        if args and args[-1].lower() in PERIODS:
            period = args.pop().lower()
        target: Channel | None = None
        if args:
            found = pick_channel(" ".join(args), mine)
            if isinstance(found, str):
                return Reply(found)
            target = found
        elif len(mine) == 1 and not self._gate.is_owner(user_id):
            target = mine[0]
        return await self.stats_view(user_id, target.chat_id if target else None, period)

    async def stats_view(self, user_id: int, chat_id: int | None, period: str) -> Reply:
        """One stats screen; also what the inline buttons switch between."""
        mine = await self.allowed(user_id)
        if mine is None or period not in PERIODS:
            return Reply(REFUSAL)
        ids = {c.chat_id for c in mine}
        if chat_id is not None and chat_id not in ids:
            return Reply(REFUSAL)
        # "All channels" is the sum over the user's own channels only.
        if chat_id is None and not self._gate.is_owner(user_id):
            if len(mine) != 1:
                return Reply("Choose a channel: " + ", ".join(describe(c) for c in mine))
            chat_id = mine[0].chat_id
        now = time.time()
        figures = await channel_stats(
            self._db, chat_id=chat_id, since=period_start(period, now), now=now
        )
        covered = mine if chat_id is None else [c for c in mine if c.chat_id == chat_id]
        buttons = _stats_buttons(mine, chat_id, period, show_all=self._gate.is_owner(user_id))
        return Reply(render(covered, period, figures), buttons)

    async def list_channels(self, user_id: int) -> Reply:
        mine = await self.allowed(user_id)
        if mine is None:
            return Reply(REFUSAL)
        if not mine:
            return Reply(
                "No channels yet. Add the bot to a channel as an admin with the"
                " <b>Invite users via link</b> right."
            )
        states = {p.chat_id: p for p in await self._pool.states()}
        lines = ["<b>Tracked channels</b>"]
        for c in mine:
            pool = states.get(c.chat_id)
            health = (
                "inactive (bot is not admin)"
                if not c.active
                else (
                    "missing the right to invite users"
                    if not c.can_invite_users
                    else f"ok, {pool.size if pool else 0}/{pool.target if pool else 0} links ready"
                )
            )
            event = event_command.listed(effective_event(c, self._default_event))
            mapped = (
                f", AdTarget id {html.escape(c.adtarget_channel_id)}"
                if c.adtarget_channel_id
                else ""
            )
            lines.append(f"\n{describe(c)}\n  mode: {c.mode}, event: {event}{mapped}\n  {health}")
        return Reply("\n".join(lines))

    async def set_event(self, user_id: int, args: list[str]) -> Reply:
        try:
            words, join_event = parse_join_event(args)
        except ValueError as error:
            if await self.allowed(user_id) is None:
                return Reply(REFUSAL)
            return Reply(event_command.refused(args, error))
        channel = await self._channel_arg(user_id, words, event_command.USAGE, need=True)
        if isinstance(channel, Reply):
            return channel
        return Reply(await event_command.store(self._db, channel, join_event))

    async def set_mode(self, user_id: int, args: list[str]) -> Reply:
        usage = "Usage: /mode &lt;channel&gt; &lt;link|request&gt;"
        channel = await self._channel_arg(user_id, args[:-1], usage, need=len(args) >= 2)
        if isinstance(channel, Reply):
            return channel
        mode = args[-1].lower()
        if mode not in ("link", "request"):
            return Reply(f"{usage}\nThe mode is “link” or “request”, not “{html.escape(mode)}”.")
        await channels.set_mode(self._db, channel.chat_id, mode)
        self._pool.wake()  # the pool swaps its links for the new mode
        what = (
            "personal single-use links"
            if mode == "link"
            else "join-request links (the bot approves requests through them)"
        )
        return Reply(f"{describe(channel)} now hands out {what}.")

    async def campaign_link(self, user_id: int, args: list[str]) -> Reply:
        usage = "Usage: /link &lt;channel&gt; &lt;campaign name&gt;"
        if len(args) < 2:
            return Reply(usage)
        mine = await self.allowed(user_id)
        if mine is None:
            return Reply(REFUSAL)
        found = pick_channel(args[0], mine)
        if isinstance(found, str):
            return Reply(f"{usage}\n{found}")
        campaign = " ".join(args[1:]).strip()[:64]
        link = await self._minter.mint_campaign(found, campaign)
        return Reply(
            f"Campaign link for {describe(found)}, “{html.escape(campaign)}”:\n"
            f"{html.escape(link.url)}\nJoins through it are reported with the campaign."
        )

    async def list_links(self, user_id: int) -> Reply:
        mine = await self.allowed(user_id)
        if mine is None:
            return Reply(REFUSAL)
        rows = await invite_links.campaign_links(self._db, [c.chat_id for c in mine])
        if not rows:
            return Reply(
                "No campaign links yet. Create one with /link &lt;channel&gt; &lt;campaign&gt;."
            )
        titles = {c.chat_id: c.title for c in mine}
        lines = ["<b>Campaign links</b>"]
        for link, joins, present in rows:
            name = html.escape(link.campaign or link.name)
            lines.append(
                f"\n{name} — {html.escape(titles[link.chat_id])}\n"
                f"  {html.escape(link.url)}\n  joins: {joins}, still there: {present}"
            )
        return Reply("\n".join(lines))

    async def owners_only(self, user_id: int) -> Reply | None:
        """None for one of ADMIN_IDS; else the refusal to send: a channel admin is
        told the command is the bridge's admins', a stranger gets the plain refusal."""
        if self._gate.is_owner(user_id):
            return None
        return Reply(OWNERS_ONLY if await self.allowed(user_id) is not None else REFUSAL)

    async def outbox_status(self, user_id: int) -> Reply:
        if (refusal := await self.owners_only(user_id)) is not None:
            return refusal
        counts = await outbox.counts(self._db)
        pause = self._courier.pause
        state = f"paused: {html.escape(pause.reason)}" if pause else "running"
        oldest = (
            "–"
            if counts.oldest_pending_at is None
            else _age(time.time() - counts.oldest_pending_at)
        )
        lines = [
            "<b>Outbox</b>",
            f"<pre>pending    {counts.pending:>8,}\nin flight  {counts.sending:>8,}\n"
            f"parked     {counts.parked:>8,}\ndelivered  {counts.delivered:>8,}\n"
            f"oldest     {oldest:>8}</pre>",
            f"Courier: {state}",
        ]
        for row_id, reason in await outbox.parked(self._db, limit=10):
            lines.append(f"• #{row_id}: {html.escape(reason)}")
        if counts.parked:
            lines.append("Send them again with /retry &lt;id&gt; or /retry all.")
        unreadable = await inbox.unreadable_summary(self._db)
        if unreadable.latest is not None:
            update_id, kind, error = unreadable.latest
            lines.append(
                f"\nTelegram updates the bridge could not read: {unreadable.count:,}"
                f" (kept {inbox.UNREADABLE_KEPT_SECONDS // 86400} days, skipped;"
                " later updates go on)\n"
                f"Latest: update {update_id} ({html.escape(kind)}): {html.escape(error)}"
            )
        return Reply("\n".join(lines))

    async def retry(self, user_id: int, args: list[str]) -> Reply:
        if not self._gate.is_owner(user_id):
            return Reply(OWNERS_ONLY)
        if len(args) != 1 or not (args[0] == "all" or args[0].lstrip("#").isdigit()):
            return Reply("Usage: /retry &lt;id|all&gt; (ids as /outbox lists them)")
        row_id = None if args[0] == "all" else int(args[0].lstrip("#"))
        count = await outbox.retry_parked(self._db, row_id)
        self._courier.wake()
        if not count:
            return Reply("Nothing to retry: no such parked row.")
        return Reply(f"{count} parked row(s) queued again.")

    async def pause(self, user_id: int, who: str) -> Reply:
        if not self._gate.is_owner(user_id):
            return Reply(OWNERS_ONLY)
        await self._courier.pause_manually(who)
        return Reply(
            "Sending to AdTarget is paused; joins keep being recorded. /resume to continue."
        )

    async def resume(self, user_id: int, who: str) -> Reply:
        if not self._gate.is_owner(user_id):
            return Reply(OWNERS_ONLY)
        await self._courier.resume_manually(who)
        return Reply("Sending to AdTarget resumed.")

    async def _channel_arg(
        self, user_id: int, words: list[str], usage: str, *, need: bool
    ) -> Channel | Reply:
        mine = await self.allowed(user_id)
        if mine is None:
            return Reply(REFUSAL)
        if not need:
            return Reply(usage)
        found = pick_channel(" ".join(words), mine)
        return Reply(f"{usage}\n{found}") if isinstance(found, str) else found


# A /stats button's callback data: `st:<chat id|all>:<period>`. Only digits where
# an id goes: int() alone would also take "1_000", " 12" or other scripts' digits.
STATS_BUTTON_PREFIX = "st:"
_STATS_BUTTON = re.compile(r"st:(all|-?[0-9]{1,19}):([0-9a-z]{1,8})")


def stats_button_data(chat_id: int | None, period: str) -> str:
    return f"{STATS_BUTTON_PREFIX}{'all' if chat_id is None else chat_id}:{period}"


def parse_stats_button(data: str) -> tuple[int | None, str] | None:
    """(chat id, None for all channels; period) from a /stats button's data, or
    None when the data is none that `stats_button_data` makes: forged, or from a
    release that made other buttons. Whose channel it names is checked later."""
    match = _STATS_BUTTON.fullmatch(data)
    if match is None or match[2] not in PERIODS:
        return None
    return (None if match[1] == "all" else int(match[1])), match[2]


def _stats_buttons(
    mine: list[Channel], chat_id: int | None, period: str, *, show_all: bool
) -> InlineKeyboardMarkup:
    periods = [
        InlineKeyboardButton(
            text=("• " if p == period else "") + p, callback_data=stats_button_data(chat_id, p)
        )
        for p in PERIODS
    ]
    rows = [periods]
    if len(mine) > 1:
        choices: list[tuple[int | None, str]] = [(None, "All")] if show_all else []
        choices += [(c.chat_id, c.title[:16]) for c in mine[:7]]
        rows += [
            [
                InlineKeyboardButton(
                    text=("• " if cid == chat_id else "") + label,
                    callback_data=stats_button_data(cid, period),
                )
                for cid, label in choices[i : i + 4]
            ]
            for i in range(0, len(choices), 4)
        ]
    return InlineKeyboardMarkup(inline_keyboard=rows)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
