"""`joinbridge doctor`: is this setup ready to report joins?

The checks run in the order an owner sets things up, each one checklist line
(bot/doctor/checklist.py): settings (and those that are legal but break a deploy), the
bot token, chat_member updates, the AdTarget key, the database (SQLite's file, or
with DATABASE_URL PostgreSQL: bot/doctor/postgres.py), every tracked
channel (rights, public or private, its join event, its AdTarget channel), the
tracker port. Nothing is changed: Telegram and AdTarget
are only read, the database is opened read-only (a probe file shows that its
directory is writable, and is removed at once), the port is let go at once.
Every network call has a short deadline, so a dead network gives an answer,
not a hang.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from bot.adtarget.client import AdTargetClient
from bot.adtarget.errors import (
    AdTargetError,
    AuthError,
    RateLimited,
    SubscriptionInactive,
    Unreachable,
)
from bot.adtarget.events import EventType
from bot.adtarget.models import RemoteChannel
from bot.doctor.checklist import Check, fail, ok, skip, warn
from bot.doctor.local import database, tracker_port
from bot.doctor.setup import channel_event, settings_checks
from bot.doctor.telegram import TelegramProbe, channel_label
from bot.settings import Settings
from storage.channels import Channel

# Seconds any one request may take.
CALL_TIMEOUT = 10.0
ADTARGET_KEY = "AdTarget key"
CHANNELS = "channels"


def describe_settings(settings: Settings, env_file: Path) -> Check:
    source = f"{env_file} and the environment" if env_file.is_file() else "the environment"
    if settings.database_url is None:
        store = f"database {settings.database_path}"
    else:
        from bot.cluster.database_url import masked

        store = f"database {masked(settings.database_url.get_secret_value())} (DATABASE_URL)"
    return ok(
        "settings",
        f"loaded from {source}: Telegram {settings.telegram_api_url}, AdTarget"
        f" {settings.adtarget_api_url}, {store}, tracker"
        f" {settings.tracker_host}:{settings.tracker_port}",
    )


async def run_checks(settings: Settings) -> AsyncIterator[Check]:
    """Every check after settings, in order, each as soon as it is known."""
    telegram = TelegramProbe(settings.telegram_api_url, settings.bot_token, CALL_TIMEOUT)
    # The client's reads give up after twice its timeout (pacing wait included).
    adtarget = AdTargetClient(
        settings.adtarget_api_url, settings.adtarget_api_key, timeout=CALL_TIMEOUT / 2
    )
    try:
        for check in settings_checks(settings):
            yield check
        token = await telegram.token()
        yield token
        if telegram.me is None:
            yield skip("chat_member updates", "not checked: the bot token check failed")
        else:
            yield await telegram.updates()
        key, remote = await adtarget_key(adtarget, settings.adtarget_api_url)
        yield key
        if settings.database_url is None:
            findings = await database(settings.database_path)
            yield findings.check
            tracked, unread = findings.channels, findings.unread
        else:
            # The bridge's store is PostgreSQL: DATABASE_PATH's file is not its database.
            from bot.doctor.postgres import postgres

            found = await postgres(settings.database_url.get_secret_value(), settings.database_path)
            for check in found.checks:
                yield check
            tracked, unread = found.channels, found.unread
        if tracked is None:
            yield skip(CHANNELS, unread)
        else:
            checks = channel_checks(tracked, telegram, remote, settings.default_event)
            async for check in checks:
                yield check
        yield tracker_port(settings.tracker_host, settings.tracker_port, settings.database_path)
    finally:
        await adtarget.aclose()
        await telegram.aclose()


async def adtarget_key(
    client: AdTargetClient, api_url: str
) -> tuple[Check, dict[str, RemoteChannel] | None]:
    """The key, by reading the site's channels (what the bridge maps channels with)."""
    try:
        remote = await client.list_channels()
    except AuthError as error:
        return fail(
            ADTARGET_KEY,
            f"the key is wrong or revoked: AdTarget answered {error}",
            "create an API key for your site in AdTarget and put it in ADTARGET_API_KEY.",
        ), None
    except SubscriptionInactive as error:
        return fail(
            ADTARGET_KEY,
            f"billing is paused: AdTarget answered {error}",
            "bring the AdTarget subscription up to date; until then the bridge keeps"
            " conversions queued.",
        ), None
    except RateLimited as error:
        wait = f" (Retry-After {error.retry_after:g} s)" if error.retry_after else ""
        return warn(
            ADTARGET_KEY,
            f"not checked: over the key's rate limit{wait}; is another bridge sending?",
            "run doctor again in a minute.",
        ), None
    except Unreachable as error:
        return fail(
            ADTARGET_KEY,
            f"AdTarget is unreachable at {api_url}: {error.message}",
            "check this machine's network, DNS and proxy, and ADTARGET_API_URL.",
        ), None
    except AdTargetError as error:
        return fail(
            ADTARGET_KEY,
            f"GET /api/v1/channels at {api_url} failed: {error}",
            "check ADTARGET_API_URL (normally https://adtarget.io), or run again later.",
        ), None
    by_telegram_id = {channel.telegram_channel_id: channel for channel in remote}
    titles = ", ".join(c.title or c.telegram_channel_id for c in remote)
    detail = f"accepted; the site has {len(remote)} channel(s)" + (f": {titles}" if titles else "")
    return ok(ADTARGET_KEY, detail), by_telegram_id


async def channel_checks(
    tracked: list[Channel],
    telegram: TelegramProbe,
    remote: dict[str, RemoteChannel] | None,
    default_event: EventType,
) -> AsyncIterator[Check]:
    active = [channel for channel in tracked if channel.active]
    for channel in tracked:
        if not channel.active:
            yield warn(
                channel_label(channel),
                "not tracked: the bot was removed or demoted there",
                "make the bot an administrator again if the bridge should track it.",
            )
    if not active:
        yield warn(
            CHANNELS,
            "no channel is tracked yet",
            "add the bot as an admin to your channel, with the Invite users via link right.",
        )
        return
    for channel in active:
        yield await telegram.rights(channel)
        yield await telegram.visibility(channel)
        yield channel_event(channel, default_event)
        yield mapping(channel, remote)


def mapping(channel: Channel, remote: dict[str, RemoteChannel] | None) -> Check:
    """The channel among AdTarget's, matched as bot/adtarget/sync.py matches it."""
    name = f"{channel_label(channel)} on AdTarget"
    if remote is None:
        return skip(name, "not checked: AdTarget's channel list could not be read")
    found = remote.get(str(channel.chat_id))
    if found is None and channel.adtarget_channel_id:
        found = next(
            (c for c in remote.values() if c.channel_id == channel.adtarget_channel_id), None
        )
    if found is None:
        # Not merely a risk: AdTarget refuses every conversion of this channel.
        return fail(
            name,
            "not among AdTarget's channels, so AdTarget would refuse its conversions"
            " (404 CHANNEL_NOT_FOUND)",
            "add this Telegram channel to your site in AdTarget; the bridge maps it at start"
            " and on /sync.",
        )
    event = f", event {found.event_type}" if found.event_type else ""
    return ok(name, f"AdTarget channel {found.channel_id}{event}")
