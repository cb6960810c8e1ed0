"""examples/landing.html in a real headless Chromium against the real bridge.

The page is served by a small local server with the tracker's address put into
its Joinbridge block; the bridge runs against the loopback fakes. Chromium is
Debian's (`.ci/ensure-chromium` installs it); Playwright drives it without a
browser download of its own. Only loopback addresses resolve in the browser, so
nothing leaves the machine, not even the redirect to t.me.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, Request, async_playwright

from bot.snippet import landing_snippet
from tests.fakes.adtarget import FakeAdTarget
from tests.fakes.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, ROOT, RunningBridge, bridge_settings, eventually

LANDING = ROOT / "examples" / "landing.html"
# What the example ships with; the test swaps in the running tracker.
PLACEHOLDER_TRACKER = "https://bridge.example"
PLACEHOLDER_CHANNEL = "@mychannel"
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


def landing_page(tracker_url: str) -> str:
    """examples/landing.html with its Joinbridge block pointed at `tracker_url`."""
    page = LANDING.read_text(encoding="utf-8")
    block = landing_snippet(PLACEHOLDER_TRACKER, PLACEHOLDER_CHANNEL)
    assert page.count(block) == 1, "examples/landing.html must embed bot/snippet.py's output"
    return page.replace(block, landing_snippet(tracker_url, str(CHANNEL_ID)))


@pytest.fixture
async def landing(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> AsyncIterator[Landing]:
    # The page's server starts first: the bridge must know its origin for CORS,
    # and the page must know the tracker's port, so the page is rendered per request.
    bridge: RunningBridge | None = None

    async def serve(_: web.Request) -> web.Response:
        assert bridge is not None
        return web.Response(text=landing_page(bridge.bridge.tracker_url), content_type="text/html")

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
        yield Landing(bridge, origin, f"{origin}/offer?{QUERY}")
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
    await page.wait_for_function(
        "document.getElementById('jb-join').href.startsWith('https://t.me/+')", timeout=15_000
    )
    link = await join_href(page)
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


async def test_landing_page_without_javascript_goes_through_the_redirect(
    landing: Landing, browser: Browser, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
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
