"""Invite quotas and the fallback link, end to end: the running bridge, clients bound to
their own loopback addresses (127.0.0.2 and 127.0.0.3 are "the internet":
TRUSTED_PROXIES=127.0.0.1 trusts only the landing page's own server), the fake
Telegram and the fake AdTarget.

A stranger cannot drain a channel's invite pool: one client gets a few personal
links per channel an hour (INVITE_LINKS_PER_CLIENT_HOUR) and after that the
channel's fallback link, which is also what everyone gets while no personal link
can be had; a 503 only when not even the fallback link exists."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from bot.invites.pool import QUOTA_WINDOW
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import invite_pool
from tests.harness import CHANNEL_ID, OWNER, RunningBridge, StartBridge, ask, eventually, write

STRANGER = "127.0.0.2"
VISITOR = "127.0.0.3"
SERVER = "127.0.0.1"  # the landing page's own server: trusted, names its visitors
QUOTA = 3  # INVITE_LINKS_PER_CLIENT_HOUR's default
POOL = 10
INVITE = "/api/v1/events/invite"
CHANNEL = {"channelId": str(CHANNEL_ID)}
LIVE_FALLBACK = (
    "SELECT url FROM invite_links WHERE kind = 'campaign' AND campaign = 'fallback'"
    " AND revoked_at IS NULL ORDER BY id DESC LIMIT 1"
)
POOL_LINKS = "SELECT count(*) FROM invite_links WHERE kind = 'visitor' AND visit_id IS NULL"
HANDED_OUT = "SELECT count(*) FROM invite_links WHERE kind = 'visitor' AND visit_id IS NOT NULL"


def client_at(running: RunningBridge, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=running.bridge.tracker_url, transport=transport, timeout=10)


async def click(
    http: httpx.AsyncClient, *, cookie: str | None = None, **query: str
) -> httpx.Response:
    """GET /track/invite as a fresh browser, or with the tempId cookie `cookie`; never
    with cookies of earlier answers (send() adds none of the client's)."""
    headers = {"Cookie": f"adtarget_temp_id={cookie}"} if cookie else {}
    request = httpx.Request(
        "GET", http.base_url.join("/track/invite"), params={**CHANNEL, **query}, headers=headers
    )
    return await http.send(request)


async def fallback_url(running: RunningBridge) -> str:
    """The channel's fallback link, once the pool's upkeep minted it."""
    await running.wait_scalar(
        "SELECT count(*) FROM invite_links WHERE campaign = 'fallback' AND revoked_at IS NULL", 1
    )
    return str(await running.scalar(LIVE_FALLBACK))


def temp(n: int) -> str:
    return f"51515151-0000-4000-8000-{n:012d}"


async def invite(http: httpx.AsyncClient, temp_id: str, **headers: str) -> dict[str, Any]:
    response = await http.post(INVITE, json={"tempId": temp_id, **CHANNEL}, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
async def tracker(start_bridge: StartBridge) -> RunningBridge:
    running = await start_bridge(
        trusted_proxies=SERVER,
        tracker_burst=500,
        tracker_rate_per_minute=60_000,
        invite_pool_size=POOL,
    )
    await running.wait_scalar(POOL_LINKS, POOL)
    return running


async def test_a_stranger_takes_the_quota_then_gets_the_fallback_link(
    tracker: RunningBridge,
) -> None:
    fallback = await fallback_url(tracker)
    async with client_at(tracker, STRANGER) as stranger:
        responses = await asyncio.gather(*(click(stranger) for _ in range(60)))
        assert {r.status_code for r in responses} == {302}
        locations = [r.headers["location"] for r in responses]
        personal = [url for url in locations if url != fallback]
        assert len(personal) == QUOTA
        assert len(set(personal)) == QUOTA
        assert locations.count(fallback) == 60 - QUOTA
        # The JSON endpoint says so; naming another address from outside changes nothing.
        answer = await invite(stranger, temp(1), **{"X-Adtarget-Client-IP": "198.51.100.7"})
        assert answer == {"inviteLink": fallback, "fallback": True}
    assert await tracker.scalar(HANDED_OUT) == QUOTA
    # Someone else, meanwhile, still gets a personal link of their own.
    async with client_at(tracker, VISITOR) as visitor:
        response = await click(visitor)
        assert response.status_code == 302
        assert response.headers["location"] not in {fallback, *personal}
        answer = await invite(visitor, temp(2))
        assert answer["fallback"] is False
        assert answer["inviteLink"] not in {fallback, *personal}


async def test_the_same_visitor_gets_the_same_link_without_spending_the_quota(
    tracker: RunningBridge,
) -> None:
    fallback = await fallback_url(tracker)
    async with client_at(tracker, STRANGER) as http:
        first = await click(http)
        assert first.status_code == 302
        own = first.headers["location"]
        temp_id = first.cookies["adtarget_temp_id"]
        # Again and again: by cookie, by tempId in the query, by the JSON endpoint.
        for _ in range(QUOTA + 2):
            again = await click(http, cookie=temp_id)
            assert again.headers["location"] == own
        by_query = await click(http, tempId=temp_id)
        assert by_query.headers["location"] == own
        assert await invite(http, temp_id) == {"inviteLink": own, "fallback": False}
        # Those repeats spent nothing: the rest of the quota is still there.
        others = [(await click(http)).headers["location"] for _ in range(QUOTA - 1)]
        assert len({own, *others}) == QUOTA
        assert fallback not in others
        assert (await click(http)).headers["location"] == fallback
        # The quota reached, the visitor still has their own link.
        assert (await click(http, cookie=temp_id)).headers["location"] == own
        assert await invite(http, temp_id) == {"inviteLink": own, "fallback": False}
    assert await tracker.scalar(HANDED_OUT) == QUOTA


async def test_the_quota_keys_on_the_client_and_survives_a_restart(
    start_bridge: StartBridge,
) -> None:
    running = await start_bridge(trusted_proxies=SERVER, invite_pool_size=POOL)
    fallback = await fallback_url(running)
    # The landing page's server names its visitors: addresses of one IPv6 /64 are
    # one client, as they are for the rate limit.
    async with client_at(running, SERVER) as server:
        answers = [
            await invite(server, temp(100 + n), **{"X-Adtarget-Client-IP": f"2001:db8::{n}"})
            for n in range(1, QUOTA + 2)
        ]
        assert [a["fallback"] for a in answers] == [False] * QUOTA + [True]
        other = await invite(server, temp(200), **{"X-Adtarget-Client-IP": "2001:db8:0:1::1"})
        assert other["fallback"] is False
    assert await running.stop() == 0
    # Counted in the database: a restart does not hand out a fresh quota.
    again = await start_bridge(trusted_proxies=SERVER, invite_pool_size=POOL)
    async with client_at(again, SERVER) as server:
        answer = await invite(server, temp(300), **{"X-Adtarget-Client-IP": "2001:db8::99"})
    assert answer == {"inviteLink": fallback, "fallback": True}


async def test_clients_are_forgotten_once_the_quota_no_longer_counts_them(
    tracker: RunningBridge,
) -> None:
    await fallback_url(tracker)
    async with client_at(tracker, STRANGER) as http:
        for _ in range(QUOTA + 1):
            await click(http)
    db = tracker.bridge.db
    assert await tracker.scalar("SELECT count(client_key) FROM invite_links") == QUOTA
    # Handed out two hours ago (the clock moved, not the code).
    await write(
        db,
        lambda tx: tx.execute(
            "UPDATE invite_links SET assigned_at = assigned_at - 7200,"
            " created_at = created_at - 7200 WHERE client_key IS NOT NULL"
        ),
    )
    assert await invite_pool.forget_clients(db, before=time.time() - QUOTA_WINDOW) == QUOTA
    assert await tracker.scalar("SELECT count(client_key) FROM invite_links") == 0
    async with client_at(tracker, STRANGER) as http:
        assert (await click(http)).headers["location"] != await fallback_url(tracker)


async def test_while_telegram_says_wait_an_empty_pool_sends_visitors_to_the_fallback(
    tracker: RunningBridge, telegram: FakeTelegram
) -> None:
    fallback = await fallback_url(tracker)
    telegram.limit_method("createChatInviteLink", per_minute=0)  # every call: 429
    async with client_at(tracker, SERVER) as server:
        answers = [
            await invite(server, temp(n), **{"X-Adtarget-Client-IP": f"198.51.100.{n}"})
            for n in range(1, POOL + 4)
        ]
        assert [a["fallback"] for a in answers] == [False] * POOL + [True] * 3
        assert {a["inviteLink"] for a in answers[POOL:]} == {fallback}
        assert len({a["inviteLink"] for a in answers[:POOL]}) == POOL
        # The redirect endpoint too, for a visitor never seen.
        response = await click(server)
        assert response.status_code == 302
        assert response.headers["location"] == fallback
        report = (await server.get("/healthz")).json()
    assert report["telegramWaitSeconds"] > 0


async def test_503_only_when_not_even_a_fallback_link_exists(
    start_bridge: StartBridge, telegram: FakeTelegram
) -> None:
    telegram.limit_method("createChatInviteLink", per_minute=0)
    running = await start_bridge(trusted_proxies=SERVER)
    async with client_at(running, VISITOR) as http:
        response = await http.post(INVITE, json={"tempId": temp(3), **CHANNEL})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "INVITE_POOL_EMPTY"
        assert int(response.headers["retry-after"]) >= 1
        clicked = await click(http)
        assert clicked.status_code == 503
    assert await running.scalar("SELECT count(*) FROM invite_links") == 0


async def test_a_telegram_refusal_with_no_fallback_link_is_a_503_not_a_500(
    start_bridge: StartBridge, telegram: FakeTelegram
) -> None:
    running = await start_bridge(trusted_proxies=SERVER)
    # Telegram now refusing (not rate-limiting) mints, then pool and fallback gone.
    # Refusing first: the pool refills in the background, and a mint between the
    # two steps would hand the visitor a fresh link (seen in CI).
    telegram.fail_next("createChatInviteLink", 400, "Bad Request: CHAT_ADMIN_REQUIRED", count=50)
    await write(running.bridge.db, lambda tx: tx.execute("UPDATE invite_links SET revoked_at = 1"))
    async with client_at(running, VISITOR) as http:
        response = await http.post(INVITE, json={"tempId": temp(4), **CHANNEL})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "INVITE_POOL_EMPTY"


async def test_a_join_through_the_fallback_link_is_a_fallback_join(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = await start_bridge(admin_ids=str(OWNER))
    fallback = await fallback_url(running)
    # The reserved campaign name is that same link, not a second one.
    text = await ask(telegram, OWNER, "/link Test fallback")
    assert re.findall(r"https://t\.me/\+\S+", text) == [fallback]
    telegram.join(CHANNEL_ID, 801, fallback)
    (conversion,) = await adtarget.wait_for_conversions(1)
    # Reported as a campaign join is: the campaign, no visit's signals.
    assert conversion["contentName"] == "fallback"
    assert conversion["telegramUserId"] == 801
    for signal in ("fbc", "fbp", "clientIp", "userAgent", "eventSourceUrl"):
        assert signal not in conversion
    stats = await ask(telegram, OWNER, "/stats")
    assert figure(stats, "Joins") == 1
    assert figure(stats, "  fallback") == 1
    assert figure(stats, "  campaign") == 0
    assert figure(stats, "  attributed") == 0


async def test_a_fallback_link_that_no_longer_works_is_replaced(
    start_bridge: StartBridge, telegram: FakeTelegram
) -> None:
    first = await start_bridge()
    old = await fallback_url(first)
    assert await first.stop() == 0
    telegram.links[old]["is_revoked"] = True  # gone on Telegram's side meanwhile
    second = await start_bridge(trusted_proxies=SERVER)

    async def replaced() -> bool:
        return await second.scalar(LIVE_FALLBACK) not in (None, old)

    await second.wait_scalar(
        "SELECT revoked_at IS NOT NULL FROM invite_links WHERE url = ?", 1, (old,)
    )
    await eventually(replaced, what="a new fallback link")
    new = str(await second.scalar(LIVE_FALLBACK))
    assert telegram.links[new]["is_revoked"] is False
    async with client_at(second, STRANGER) as http:
        for _ in range(QUOTA):
            await click(http)
        assert (await click(http)).headers["location"] == new


async def test_only_tracked_active_channels_are_served(
    tracker: RunningBridge, telegram: FakeTelegram
) -> None:
    await fallback_url(tracker)
    async with client_at(tracker, VISITOR) as http:
        unknown = await http.post(INVITE, json={"tempId": temp(4), "channelId": "-1009999999999"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "CHANNEL_NOT_FOUND"
        # The bot no longer an admin: no personal link and no fallback link either.
        telegram.bot_status_change(CHANNEL_ID, "member")
        await tracker.wait_scalar("SELECT active FROM channels WHERE chat_id = ?", 0, (CHANNEL_ID,))
        for response in (
            await http.post(INVITE, json={"tempId": temp(5), **CHANNEL}),
            await click(http),
        ):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "CHANNEL_NOT_FOUND"
        # Admin again: served again.
        await tracker.track_channel(telegram)
        assert (await invite(http, temp(6)))["fallback"] is False


def figure(text: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}\s+([\d,]+)$", text, re.MULTILINE)
    assert match, f"{label!r} not in {text!r}"
    return int(match.group(1).replace(",", ""))
