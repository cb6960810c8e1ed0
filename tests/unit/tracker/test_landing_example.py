"""The snippet the bot hands out and examples/landing.html stay one and the same script."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from bot.tracker.snippet import landing_snippet, public_link
from tests.harness import ROOT

LANDING = ROOT / "examples" / "landing.html"
FALLBACK = "https://t.me/+AbCdEfGhIjKlMnOp"


class Parsed(HTMLParser):
    """What a browser's parser makes of the snippet: tags, the button's attributes
    (entities decoded), comments."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.button: dict[str, str | None] = {}
        self.comments: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self.button = dict(attrs)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def test_landing_page_embeds_exactly_the_snippet_once() -> None:
    page = LANDING.read_text(encoding="utf-8")
    snippet = landing_snippet("https://bridge.example", "@mychannel", "https://t.me/mychannel")
    assert page.count(snippet) == 1
    # One Joinbridge script on the page, and nothing it loads from elsewhere.
    assert _uncommented(page).count('id="jb-join"') == 1
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?://", _uncommented(page))


def test_the_settings_are_the_buttons_attributes() -> None:
    snippet = landing_snippet("https://shop.example/joinbridge/", "@my_channel", FALLBACK)
    button = Parsed(snippet).button
    # The href leads into the channel with no help from the tracker.
    assert button["href"] == FALLBACK
    assert button["data-tracker"] == "https://shop.example/joinbridge"
    assert button["data-channel"] == "@my_channel"
    # Telegram has no use for the page's URL: the browser's default Referer policy.
    assert "referrerpolicy" not in button
    # The script reads them from the button, not from copies of its own.
    script = snippet.split("<script>", 1)[1]
    for value in ("shop.example", "my_channel", "AbCdEf"):
        assert value not in script
    assert '"/api/v1/events"' in script
    assert "/track/invite" not in snippet


def test_without_a_fallback_link_the_button_goes_through_the_tracker() -> None:
    # What onboarding renders when Telegram gave no fallback link just now.
    button = Parsed(landing_snippet("https://bridge.example/", "@my_channel", None)).button
    assert button["href"] == "https://bridge.example/track/invite?channelId=%40my_channel"
    assert button["data-tracker"] == "https://bridge.example"
    # The tracker's redirect reads the click's fbclid and UTM from the Referer.
    assert button["referrerpolicy"] == "no-referrer-when-downgrade"


@pytest.mark.parametrize(
    ("tracker", "channel", "fallback"),
    [
        ('https://bridge.example/"x', "-->@a&b", FALLBACK),
        ("https://bridge.example", "@a", 'https://t.me/+x"onmouseover="alert(1)'),
        ("https://bridge.example", "@a", "https://t.me/+x'><script>alert(1)</script>"),
        ("https://b.example/<script>", '"><img src=x>', "https://t.me/+a&amp;b"),
        ("https://bridge.example", "@a", "https://t.me/+x--></a><!--"),
    ],
)
def test_every_value_stays_inside_its_attribute(tracker: str, channel: str, fallback: str) -> None:
    snippet = landing_snippet(tracker, channel, fallback)
    parsed = Parsed(snippet)
    # A browser reads back exactly the values given: nothing leaked into markup.
    assert parsed.button == {
        "id": "jb-join",
        "href": fallback,
        "data-tracker": tracker,
        "data-channel": channel,
    }
    assert parsed.tags == ["a", "script"]
    (comment,) = parsed.comments  # the channel's name cannot close the comment
    assert comment.endswith("data-tracker, data-channel. ")


def test_a_fallback_that_is_not_a_web_link_is_refused() -> None:
    for bad in ("javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,x", "t.me/x", ""):
        with pytest.raises(ValueError, match="http"):
            landing_snippet("https://bridge.example", "@a", bad)


def test_a_public_channels_link() -> None:
    assert public_link("mychannel") == "https://t.me/mychannel"
    assert public_link("a/b?c") == "https://t.me/a%2Fb%3Fc"


def test_snippet_fits_in_the_onboarding_message() -> None:
    # Telegram caps a message at 4096 characters; the summary around it needs room.
    longest = landing_snippet(
        "https://tracker.some-long-domain.example", "-1001234567890", FALLBACK
    )
    assert len(longest) < 3000


def _uncommented(page: str) -> str:
    return re.sub(r"<!--.*?-->", "", page, flags=re.DOTALL)
