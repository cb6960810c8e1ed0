"""The snippet in the onboarding message carries the channel's way in without the
tracker: a public channel's own link, else its fallback link, else (Telegram
refusing to mint one just now) the tracker's redirect and a note saying how to
get the link. The browser side is tests/e2e/test_browser_landing.py."""

from __future__ import annotations

import html
import re
from pathlib import Path

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from bot.tracker.snippet import landing_snippet
from tests.harness import (
    CHANNEL_ID,
    OWNER,
    RunningBridge,
    StartBridge,
    ask,
    bridge_settings,
    eventually,
    sent_to,
)

PROMOTER = 1  # who promotes the bot in the fake when a test does not say
PUBLIC_CHANNEL = -1009876543210
LIVE_FALLBACK = (
    "SELECT url FROM invite_links WHERE chat_id = ? AND kind = 'campaign'"
    " AND campaign = 'fallback' AND revoked_at IS NULL"
)


async def onboarding(telegram: FakeTelegram, user_id: int) -> str:
    await eventually(lambda: bool(sent_to(telegram, user_id)), what="onboarding message")
    (text,) = sent_to(telegram, user_id)
    return text


def snippet_of(message: str) -> str:
    """The snippet as the owner copies it out of the message."""
    return html.unescape(message.split("<pre>", 1)[1].split("</pre>", 1)[0])


def as_telegram_counts(message: str) -> int:
    """A message's length as Telegram caps it (4096): after its HTML entities are
    parsed, in UTF-16 code units."""
    text = html.unescape(re.sub(r"</?(b|pre)>", "", message))
    return len(text.encode("utf-16-le")) // 2


async def test_a_private_channels_snippet_leads_to_its_fallback_link(
    start_bridge: StartBridge, telegram: FakeTelegram
) -> None:
    running = await start_bridge(admin_ids=str(OWNER))
    message = await onboarding(telegram, PROMOTER)
    (fallback,) = await running.bridge.db.fetchall(LIVE_FALLBACK, (CHANNEL_ID,))
    link = str(fallback[0])
    tracker = running.settings.public_tracker_url
    assert snippet_of(message) == landing_snippet(tracker, str(CHANNEL_ID), link)
    # The owner is told what the button's href is, and how to find it again.
    assert f"the channel's fallback link {link}" in message
    assert f"/link {CHANNEL_ID} fallback" in message
    answer = await ask(telegram, OWNER, f"/link {CHANNEL_ID} fallback")
    assert re.findall(r"https://t\.me/\+\S+", answer) == [link]


async def test_a_public_channels_snippet_leads_to_its_public_link(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # Telegram's longest title: the whole message must still fit in one.
    title = "Public " + "x" * 121
    telegram.add_channel(PUBLIC_CHANNEL, title, username="publicone")
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget))
    await running.start()
    try:
        telegram.bot_status_change(PUBLIC_CHANNEL, "administrator", by_user_id=777)
        message = await onboarding(telegram, 777)
        tracker = running.settings.public_tracker_url
        snippet = snippet_of(message)
        assert snippet == landing_snippet(tracker, "@publicone", "https://t.me/publicone")
        assert "the channel's public link https://t.me/publicone" in message
        assert as_telegram_counts(message) <= 4096
    finally:
        assert await running.stop() == 0


async def test_with_telegram_refusing_links_the_snippet_says_how_to_get_the_fallback(
    start_bridge: StartBridge, telegram: FakeTelegram
) -> None:
    telegram.limit_method("createChatInviteLink", per_minute=0)
    running = await start_bridge()
    message = await onboarding(telegram, PROMOTER)
    tracker = running.settings.public_tracker_url
    # The button goes through the tracker until the owner puts the link in.
    assert snippet_of(message) == landing_snippet(tracker, str(CHANNEL_ID), None)
    assert f"/track/invite?channelId={CHANNEL_ID}" in snippet_of(message)
    assert f"Send /link {CHANNEL_ID} fallback and put the link" in message
    assert await running.scalar("SELECT count(*) FROM invite_links") == 0
