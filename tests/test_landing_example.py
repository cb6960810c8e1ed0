"""The snippet the bot hands out and examples/landing.html stay one and the same script."""

from __future__ import annotations

import re

from bot.snippet import landing_snippet
from tests.harness import ROOT

LANDING = ROOT / "examples" / "landing.html"


def test_landing_page_embeds_exactly_the_snippet_once() -> None:
    page = LANDING.read_text(encoding="utf-8")
    assert page.count(landing_snippet("https://bridge.example", "@mychannel")) == 1
    # One Joinbridge script on the page, and nothing it loads from elsewhere.
    assert _uncommented(page).count('id="jb-join"') == 1
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?://", _uncommented(page))


def test_the_button_href_is_the_only_setting() -> None:
    snippet = landing_snippet("https://shop.example/joinbridge/", "@my_channel")
    href = "https://shop.example/joinbridge/track/invite?channelId=%40my_channel"
    assert f'href="{href}"' in snippet
    # The script derives the API and the channel from the button, not from copies.
    script = snippet.split("<script>", 1)[1]
    assert "shop.example" not in script
    assert "my_channel" not in script
    assert '"/api/v1/events"' in script


def test_channel_and_tracker_are_escaped() -> None:
    snippet = landing_snippet('https://bridge.example/"x', "-->@a&b")
    assert "-->@a" not in snippet
    assert 'example/"x' not in snippet
    assert "channelId=--%3E%40a%26b" in snippet


def test_snippet_fits_in_the_onboarding_message() -> None:
    # Telegram caps a message at 4096 characters; the summary around it needs room.
    assert len(landing_snippet("https://tracker.some-long-domain.example", "-1001234567890")) < 3000


def _uncommented(page: str) -> str:
    return re.sub(r"<!--.*?-->", "", page, flags=re.DOTALL)
