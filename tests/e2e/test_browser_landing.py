"""examples/landing.html in a real headless Chromium against the real bridge.

The page is served by a small local server with the tracker's address and the
channel's fallback link (the one the onboarding message gave) put into its
Joinbridge block; the bridge runs against the loopback fakes. Chromium is
Debian's (`.ci/ensure-chromium` installs it); Playwright drives it without a
browser download of its own. Only loopback addresses resolve in the browser, so
nothing leaves the machine: navigations to t.me are answered by the test's own
route, which records where the button led.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Route,
    async_playwright,
)

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from bot.tracker.snippet import landing_snippet
from tests.harness import (
    CHANNEL_ID,
    ROOT,
    RunningBridge,
    bridge_settings,
    eventually,
    sent_to,
)

LANDING = ROOT / "examples" / "landing.html"
# What the example ships with; the test swaps in the running tracker.
PLACEHOLDER_TRACKER = "https://bridge.example"
PLACEHOLDER_CHANNEL = "@mychannel"
PLACEHOLDER_FALLBACK = "https://t.me/mychannel"
PROMOTER = 1  # who promotes the bot in the fake: the onboarding message goes to them
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
OUTPUT = ROOT / "test-output" / "browser"

FBCLID = "IwAR3browser_Test-1"
QUERY = f"fbclid={FBCLID}&utm_source=meta&utm_campaign=spring_sale"
FBC = re.compile(rf"fb\.1\.\d{{13}}\.{re.escape(FBCLID)}")
INVITE = re.compile(r"https://t\.me/\+[\w-]{16}")


@dataclass
class Landing:
    bridge: RunningBridge
    origin: str  # where the page is served
    url: str  # the page, as an ad click would open it
    # The snippet's settings, read when the page is served: a test may point the
    # page at a tracker that is not there, or render it as onboarding does when
    # Telegram gave no fallback link (None).
    tracker: str
    channel: str
    fallback: str | None

    @property
    def way_in(self) -> str:
        """The fallback link the page's button carries."""
        assert self.fallback is not None
        return self.fallback

    async def visit(self, temp_id: str) -> dict[str, object]:
        row = await self.bridge.bridge.db.fetchone(
            "SELECT * FROM visits WHERE temp_id = ?", (temp_id,)
        )
        assert row is not None, f"no visit stored for tempId {temp_id}"
        return dict(row)

    async def visit_of_link(self, url: str) -> dict[str, object]:
        """The visit an invite_links row points at; fails when the link is not ours."""
        row = await self.bridge.bridge.db.fetchone(
            "SELECT v.temp_id FROM invite_links l JOIN visits v ON v.id = l.visit_id"
            " WHERE l.url = ? AND l.kind = 'visitor' AND l.chat_id = ?",
            (url, CHANNEL_ID),
        )
        assert row is not None, f"{url} is not a visitor link the bridge minted"
        return await self.visit(row[0])


def landing_page(tracker_url: str, channel: str, fallback: str | None) -> str:
    """examples/landing.html with its Joinbridge block set up for this bridge."""
    page = LANDING.read_text(encoding="utf-8")
    block = landing_snippet(PLACEHOLDER_TRACKER, PLACEHOLDER_CHANNEL, PLACEHOLDER_FALLBACK)
    assert page.count(block) == 1, (
        "examples/landing.html must embed bot/tracker/snippet.py's output"
    )
    return page.replace(block, landing_snippet(tracker_url, channel, fallback))


async def onboarding_fallback(telegram: FakeTelegram) -> str:
    """The button's href in the snippet the onboarding message gave the promoter."""
    await eventually(lambda: bool(sent_to(telegram, PROMOTER)), what="onboarding message")
    (message,) = sent_to(telegram, PROMOTER)
    snippet = html.unescape(message.split("<pre>", 1)[1].split("</pre>", 1)[0])
    (href,) = re.findall(r'<a id="jb-join" href="([^"]+)"', snippet)
    return html.unescape(href)


@pytest.fixture
async def landing(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> AsyncIterator[Landing]:
    # The page's server starts first: the bridge must know its origin for CORS,
    # and the page must know the tracker's port, so the page is rendered per request.
    landing: Landing | None = None

    async def serve(_: web.Request) -> web.Response:
        assert landing is not None
        page = landing_page(landing.tracker, landing.channel, landing.fallback)
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/offer", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    bridge = RunningBridge(
        bridge_settings(tmp_path, telegram, adtarget, tracker_allowed_origins=origin)
    )
    await bridge.start()
    try:
        await bridge.track_channel(telegram)
        fallback = await onboarding_fallback(telegram)
        # The channel's fallback link, the one the tracker also hands out.
        assert (
            await bridge.scalar(
                "SELECT campaign FROM invite_links WHERE url = ? AND revoked_at IS NULL",
                (fallback,),
            )
            == "fallback"
        )
        landing = Landing(
            bridge,
            origin,
            f"{origin}/offer?{QUERY}",
            tracker=bridge.bridge.tracker_url,
            channel=str(CHANNEL_ID),
            fallback=fallback,
        )
        yield landing
    finally:
        if not bridge.stop_event.is_set():
            assert await bridge.stop() == 0
        await runner.cleanup()


def require_chromium() -> Path:
    """The browser binary, or a failure saying how to get it: this test never skips."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run .ci/ensure-chromium "
            "(apt-get install chromium) or set CHROMIUM to its path"
        )
    return CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = require_chromium()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(executable),
            headless=True,
            args=[
                # Every name but loopback fails to resolve: t.me is never contacted.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--no-proxy-server",
            ],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


def screenshot_path(name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT / name


async def cookies_of(context: BrowserContext, origin: str) -> dict[str, str]:
    return {c["name"]: c["value"] for c in await context.cookies(origin)}


async def join_href(page: Page) -> str:
    href = await page.get_attribute("#jb-join", "href")
    assert href is not None
    return href


async def telegram_opened(context: BrowserContext) -> list[str]:
    """Answer every navigation to t.me in `context` with a stand-in page; the list
    fills with the URLs the browser went to."""
    opened: list[str] = []

    async def answer(route: Route) -> None:
        opened.append(route.request.url)
        await route.fulfill(status=200, content_type="text/html", body="<title>Telegram</title>")

    await context.route(re.compile(r"^https://t\.me/"), answer)
    return opened


async def own_link(page: Page, fallback: str) -> str:
    """The visitor's own link, once the page put it on the button."""
    await page.wait_for_function(
        "fallback => { const href = document.getElementById('jb-join').href;"
        " return href !== fallback && href.startsWith('https://t.me/+'); }",
        arg=fallback,
        timeout=15_000,
    )
    return await join_href(page)


async def test_landing_page_records_the_visit_and_its_link_converts(
    landing: Landing, browser: Browser, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    context = await browser.new_context(viewport={"width": 480, "height": 860})
    page = await context.new_page()
    posted: list[str] = []

    def on_request(request: Request) -> None:
        if request.method == "POST":
            posted.append(urlsplit(request.url).path)

    page.on("request", on_request)
    await page.goto(landing.url)
    user_agent = await page.evaluate("navigator.userAgent")

    # The visit is stored under the tempId the tracker gave the browser.
    async def temp_id() -> str | None:
        return (await cookies_of(context, landing.origin)).get("adtarget_temp_id")

    await eventually(temp_id, what="adtarget_temp_id cookie from the visit answer")
    visitor = await temp_id()
    assert visitor is not None
    visit = await landing.visit(visitor)
    # Meta's pixel is not on the page, so _fbp arrives "late": from the test, now.
    late_fbp = "fb.1.1764200000000.987654321"
    await context.add_cookies([{"name": "_fbp", "value": late_fbp, "url": landing.origin}])

    cookies = await cookies_of(context, landing.origin)
    assert FBC.fullmatch(cookies["_fbc"]), cookies
    assert visit["fbc"] == cookies["_fbc"]
    assert visit["fbp"] is None
    assert visit["href"] == landing.url
    assert visit["utm_source"] == "meta"
    assert visit["utm_campaign"] == "spring_sale"
    assert visit["user_agent"] == user_agent
    assert visit["client_ip"] == "127.0.0.1"

    # The button now carries the visitor's own link, minted by the bot for this visit.
    link = await own_link(page, landing.way_in)
    assert INVITE.fullmatch(link), link
    assert link in telegram.links
    assert (await landing.visit_of_link(link))["temp_id"] == visitor

    # The late _fbp is noticed by the page and patched into the visit.
    await landing.bridge.wait_scalar(
        "SELECT fbp FROM visits WHERE temp_id = ?", late_fbp, (visitor,), timeout=15
    )
    # Playwright's report of the request may trail the tracker's handling of it.
    await eventually(
        lambda: "/api/v1/events/update-fbp" in posted, what="the page's update-fbp request"
    )
    await eventually(
        lambda: any(
            r.body.get("fbp") == late_fbp for r in adtarget.received_on("/api/v1/events/update-fbp")
        ),
        what="update-fbp forwarded to AdTarget",
    )

    shot = screenshot_path("landing.png")
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    await context.close()

    # Someone joins through the link the page showed: one conversion with the page's signals.
    telegram.join(CHANNEL_ID, 7700001, link)
    (conversion,) = await adtarget.wait_for_conversions(1, timeout=15)
    assert conversion["telegramUserId"] == 7700001
    assert conversion["fbc"] == cookies["_fbc"]
    assert conversion["fbp"] == late_fbp
    assert conversion["userAgent"] == user_agent
    assert conversion["eventSourceUrl"] == landing.url


async def test_without_javascript_the_button_leads_into_the_channel(
    landing: Landing, browser: Browser
) -> None:
    context = await browser.new_context(java_script_enabled=False)
    opened = await telegram_opened(context)
    page = await context.new_page()
    tracker_requests: list[str] = []
    page.on(
        "request",
        lambda r: tracker_requests.append(r.url) if r.url.startswith(landing.tracker) else None,
    )
    await page.goto(landing.url)
    assert await join_href(page) == landing.fallback
    await page.click("#jb-join")
    await page.wait_for_url(landing.way_in)
    assert opened == [landing.fallback]
    assert tracker_requests == []
    await context.close()


async def test_a_snippet_without_a_fallback_link_goes_through_the_redirect_without_javascript(
    landing: Landing, browser: Browser, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # Onboarding's snippet when Telegram gave no fallback link just now.
    landing.fallback = None
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(landing.url)
    tracker = landing.bridge.bridge.tracker_url
    assert await join_href(page) == f"{tracker}/track/invite?channelId={CHANNEL_ID}"
    shot = screenshot_path("landing-no-js.png")
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # The click goes to the tracker, which answers 302 to a freshly minted link; the
    # browser then heads for t.me, which the test's resolver keeps it from reaching.
    async with page.expect_request(lambda r: r.url.startswith("https://t.me/")) as leaving:
        await page.click("#jb-join")
    to_telegram = await leaving.value
    hop: Request | None = to_telegram.redirected_from
    assert hop is not None
    assert hop.url == f"{tracker}/track/invite?channelId={CHANNEL_ID}"
    answer = await hop.response()
    assert answer is not None
    assert answer.status == 302
    link = to_telegram.url
    assert INVITE.fullmatch(link), link
    assert answer.headers["location"] == link
    assert link in telegram.links

    # The click itself was the visit: attribution from the page's URL (the Referer).
    visit = await landing.visit_of_link(link)
    assert FBC.fullmatch(str(visit["fbc"])), visit
    assert visit["href"] == landing.url
    assert visit["utm_source"] == "meta"
    assert visit["utm_campaign"] == "spring_sale"
    assert visit["user_agent"] == (await hop.all_headers())["user-agent"]
    cookies = await cookies_of(context, tracker)
    assert cookies["adtarget_temp_id"] == visit["temp_id"]
    await context.close()

    telegram.join(CHANNEL_ID, 7700002, link)
    (conversion,) = await adtarget.wait_for_conversions(1, timeout=15)
    assert conversion["telegramUserId"] == 7700002
    assert conversion["fbc"] == visit["fbc"]
    assert conversion["eventSourceUrl"] == landing.url


async def test_a_click_before_the_tracker_answers_waits_for_the_visitors_own_link(
    landing: Landing, browser: Browser, telegram: FakeTelegram
) -> None:
    context = await browser.new_context()
    opened = await telegram_opened(context)
    page = await context.new_page()
    # The tracker is slow: its invite answer is held until after the click.
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow_invite(route: Route) -> None:
        arrived.set()
        await release.wait()
        await route.continue_()

    await page.route(f"{landing.tracker}/api/v1/events/invite", slow_invite)
    await page.goto(landing.url)
    await asyncio.wait_for(arrived.wait(), 15)
    assert await join_href(page) == landing.fallback
    await page.click("#jb-join")  # held by the page, not followed yet
    assert opened == []
    release.set()
    # The answer arrives within the click's wait: the click goes to the visitor's own link.
    await page.wait_for_url(INVITE)
    (link,) = opened
    assert INVITE.fullmatch(link), link
    assert link != landing.fallback
    assert link in telegram.links
    await landing.visit_of_link(link)
    await context.close()


async def test_with_the_tracker_stopped_the_button_leads_into_the_channel(
    landing: Landing, browser: Browser
) -> None:
    assert await landing.bridge.stop() == 0  # the page still points at its address
    context = await browser.new_context()
    opened = await telegram_opened(context)
    page = await context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    await page.goto(landing.url)
    # The visit's POST is refused at once: the button keeps its fallback link.
    await eventually(lambda: bool(failed), what="the visit's POST refused")
    assert failed[0] == f"{landing.tracker}/api/v1/events/visit"
    assert await join_href(page) == landing.fallback
    await page.click("#jb-join")
    await page.wait_for_url(landing.way_in)
    assert opened == [landing.fallback]
    await context.close()


async def test_a_tracker_that_never_answers_lets_a_click_through_to_the_fallback_link(
    landing: Landing, browser: Browser, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    async with silent_server() as (tracker, connections):
        landing.tracker = tracker
        context = await browser.new_context()
        opened = await telegram_opened(context)
        page = await context.new_page()
        await page.goto(landing.url)
        await eventually(lambda: bool(connections), what="the page's request to the silent tracker")
        # Clicked while the tracker has not answered: after the wait, the fallback link.
        await page.click("#jb-join")
        await page.wait_for_url(landing.way_in)
        assert opened == [landing.fallback]
        await context.close()
    # And through it the visitor is in the channel, counted as a fallback join.
    telegram.join(CHANNEL_ID, 7700003, landing.way_in)
    (conversion,) = await adtarget.wait_for_conversions(1, timeout=15)
    assert conversion["telegramUserId"] == 7700003
    assert conversion["contentName"] == "fallback"


async def test_a_tracker_answering_with_an_error_leaves_the_fallback_link(
    landing: Landing, browser: Browser
) -> None:
    landing.channel = "-1009999999999"  # not a tracked channel: the invite is a 404
    context = await browser.new_context()
    opened = await telegram_opened(context)
    page = await context.new_page()
    answers: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda r: (
            answers.append((urlsplit(r.url).path, r.status)) if r.request.method == "POST" else None
        ),
    )
    await page.goto(landing.url)
    invite = ("/api/v1/events/invite", 404)
    await eventually(lambda: invite in answers, what="the tracker's 404 to the invite")
    assert ("/api/v1/events/visit", 200) in answers
    assert await join_href(page) == landing.fallback
    await page.click("#jb-join")
    await page.wait_for_url(landing.way_in)
    assert opened == [landing.fallback]
    await context.close()


async def test_a_script_error_leaves_the_fallback_link(landing: Landing, browser: Browser) -> None:
    context = await browser.new_context()
    # A browser whose fetch throws (blocked, or too old): the script fails mid-way.
    await context.add_init_script("window.fetch = function () { throw new Error('no fetch'); };")
    opened = await telegram_opened(context)
    page = await context.new_page()
    await page.goto(landing.url)
    assert await join_href(page) == landing.fallback
    await page.click("#jb-join")
    await page.wait_for_url(landing.way_in)
    assert opened == [landing.fallback]
    await context.close()


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[socket.socket]]]:
    """A tracker that accepts connections, reads, and never answers. Yields its URL
    and the connections it holds."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    connections: list[socket.socket] = []

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while True:
            connection, _ = await loop.sock_accept(listener)
            connections.append(connection)

    task = asyncio.create_task(accept())
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    finally:
        task.cancel()
        for connection in connections:
            connection.close()
        listener.close()
