"""The landing page's side end to end: visit -> invite link -> join -> one conversion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import channels
from tests.harness import CHANNEL_ID, RunningBridge, bridge_settings, eventually

TEMP_ID = "3f2b8c1e-5d4a-4f6b-9c7e-2a1b0c9d8e7f"
PAGE = "https://landing.example/offer?fbclid=IwAR2xYz_Ab-9&utm_source=meta&utm_campaign=black"


@pytest.fixture
async def http(bridge: RunningBridge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bridge.bridge.tracker_url, timeout=10) as client:
        yield client


async def post(http: httpx.AsyncClient, path: str, body: Any, **headers: str) -> httpx.Response:
    return await http.post(path, json=body, headers=headers)


async def test_visit_invite_join_is_one_conversion_with_the_visit_attribution(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    http: httpx.AsyncClient,
) -> None:
    visit = await post(
        http,
        "/api/v1/events/visit",
        {
            "tempId": TEMP_ID,
            "href": PAGE,
            "fbp": "fb.1.1764100000000.42",
            "referrer": "https://m.facebook.com/",
        },
        **{
            "X-Adtarget-Client-IP": "203.0.113.77",
            "X-Adtarget-Client-User-Agent": "Mozilla/5.0 Test",
        },
    )
    assert visit.status_code == 200
    answer = visit.json()
    assert answer["tempId"] == TEMP_ID
    assert answer["cookies"]["tempId"] == {
        "name": "adtarget_temp_id",
        "value": TEMP_ID,
        "maxAge": 31536000,
        "sameSite": "Lax",
    }
    cookies = visit.headers.get_list("set-cookie")
    assert any(
        c.startswith(f"adtarget_temp_id={TEMP_ID}") and "Max-Age=31536000" in c for c in cookies
    )
    assert any(c.startswith("adtarget_session_id=") and "Max-Age=1800" in c for c in cookies)
    assert all("SameSite=Lax" in c for c in cookies)

    invite = await post(
        http, "/api/v1/events/invite", {"tempId": TEMP_ID, "channelId": str(CHANNEL_ID)}
    )
    assert invite.status_code == 200
    url = invite.json()["inviteLink"]
    assert url in telegram.links
    # The same visitor and channel get the same link while it lives.
    again = await post(http, "/api/v1/events/invite", {"tempId": TEMP_ID, "channelId": CHANNEL_ID})
    assert again.json()["inviteLink"] == url

    telegram.join(CHANNEL_ID, 6600001, url, date=1764100500)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 6600001
    assert conversion["eventTime"] == 1764100500000
    assert conversion["fbc"].startswith("fb.1.")
    assert conversion["fbc"].endswith(".IwAR2xYz_Ab-9")
    assert conversion["fbp"] == "fb.1.1764100000000.42"
    assert conversion["clientIp"] == "203.0.113.77"
    assert conversion["userAgent"] == "Mozilla/5.0 Test"
    assert conversion["eventSourceUrl"] == PAGE

    # The visit itself went to AdTarget through the outbox, the visitor's IP and
    # User-Agent as AdTarget's forwarding headers.
    (forwarded,) = adtarget.received_on("/api/v1/events/visit")
    assert forwarded.headers["x-adtarget-client-ip"] == "203.0.113.77"
    assert forwarded.headers["x-adtarget-client-user-agent"] == "Mozilla/5.0 Test"
    assert forwarded.body["tempId"] == TEMP_ID
    assert forwarded.body["href"] == PAGE
    assert forwarded.body["utmSource"] == "meta"
    assert "clientIp" not in forwarded.body

    # The used single-member link is revoked, so a leave cannot free it for others.
    await telegram.wait_for_call("revokeChatInviteLink", lambda c: c.raw.get("invite_link") == url)
    await bridge.wait_scalar(
        "SELECT revoked_at IS NOT NULL FROM invite_links WHERE url = ?", 1, (url,)
    )


async def test_update_fbp_patches_and_forwards(
    bridge: RunningBridge, adtarget: FakeAdTarget, http: httpx.AsyncClient
) -> None:
    await post(http, "/api/v1/events/visit", {"tempId": TEMP_ID, "href": PAGE})
    patched = await post(
        http, "/api/v1/events/update-fbp", {"tempId": TEMP_ID, "fbp": "fb.1.2.late"}
    )
    assert patched.status_code == 200
    assert patched.json() == {"success": True}
    await bridge.wait_scalar("SELECT fbp FROM visits WHERE temp_id = ?", "fb.1.2.late", (TEMP_ID,))
    await eventually(lambda: bool(adtarget.received_on("/api/v1/events/update-fbp")))
    unknown = await post(
        http,
        "/api/v1/events/update-fbp",
        {"tempId": "00000000-0000-4000-8000-000000000000", "fbp": "x"},
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "VISIT_NOT_FOUND"


async def test_repeat_visit_keeps_old_values_and_takes_new_ones(
    bridge: RunningBridge, http: httpx.AsyncClient
) -> None:
    await post(
        http, "/api/v1/events/visit", {"tempId": TEMP_ID, "href": PAGE, "fbp": "fb.1.1.first"}
    )
    await post(
        http,
        "/api/v1/events/visit",
        {"tempId": TEMP_ID, "href": "https://landing.example/b", "gclid": "G-1"},
    )
    row = await bridge.bridge.db.fetchone(
        "SELECT fbp, gclid, href FROM visits WHERE temp_id = ?", (TEMP_ID,)
    )
    assert row is not None
    assert tuple(row) == ("fb.1.1.first", "G-1", "https://landing.example/b")


async def test_redirect_endpoint_records_the_click_and_redirects(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    http: httpx.AsyncClient,
) -> None:
    response = await http.get(
        "/track/invite",
        params={
            "channelId": str(CHANNEL_ID),
            "fbclid": "AbC-123_x",
            "utm_source": "tiktok",
            "ttclid": "T1",
        },
        headers={"Referer": "https://landing.example/plain", "User-Agent": "NoJS/1.0"},
    )
    assert response.status_code == 302
    url = response.headers["location"]
    assert url in telegram.links
    temp_id = response.cookies["adtarget_temp_id"]
    row = await bridge.bridge.db.fetchone(
        "SELECT fbc, utm_source, ttclid, user_agent, href FROM visits WHERE temp_id = ?", (temp_id,)
    )
    assert row is not None
    assert row["fbc"].endswith(".AbC-123_x")
    assert (row["utm_source"], row["ttclid"], row["user_agent"]) == ("tiktok", "T1", "NoJS/1.0")
    assert row["href"] == "https://landing.example/plain"
    # With the cookie, a second click is the same visitor and the same link.
    again = await http.get("/track/invite", params={"channelId": str(CHANNEL_ID)})
    assert again.headers["location"] == url
    telegram.join(CHANNEL_ID, 6600002, url)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["ttclid"] == "T1"


async def test_channel_by_username_and_unknown_channel(
    bridge: RunningBridge, http: httpx.AsyncClient
) -> None:
    await channels.set_adtarget_id(bridge.bridge.db, CHANNEL_ID, "ch_42")
    by_adtarget_id = await post(
        http, "/api/v1/events/invite", {"tempId": TEMP_ID, "channelId": "ch_42"}
    )
    assert by_adtarget_id.status_code == 200
    unknown = await post(http, "/api/v1/events/invite", {"tempId": TEMP_ID, "channelId": "@nosuch"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "CHANNEL_NOT_FOUND"


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b"{not json", "application/json", "body: not valid JSON"),
        (
            b'{"href": "https://x.example/"}',
            "text/plain",
            "body: Content-Type must be application/json",
        ),
        (b"[1, 2]", "application/json", "body: must be a JSON object"),
        (b"{}", "application/json", "href: required"),
        (
            b'{"href": "ftp://x.example/"}',
            "application/json",
            "href: must be an absolute http(s) URL",
        ),
        (
            b'{"href": "https://x.example/", "tempId": "abc"}',
            "application/json",
            "tempId: must be a UUID",
        ),
        (b'{"href": "https://x.example/", "fbc": 5}', "application/json", "fbc: must be a string"),
        (
            b'{"href": "https://x.example/", "pad": "' + b"x" * 17000 + b'"}',
            "application/json",
            "body: larger than 16 KB",
        ),
    ],
)
async def test_bad_visit_input_is_a_clear_400(
    http: httpx.AsyncClient, content: bytes, content_type: str, message: str
) -> None:
    response = await http.post(
        "/api/v1/events/visit", content=content, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_PAYLOAD"
    assert error["message"].startswith(message)
    # And the server keeps serving.
    assert (await http.get("/healthz")).status_code == 200


async def test_healthz_reports_database_polling_courier_and_pools(
    bridge: RunningBridge, http: httpx.AsyncClient
) -> None:
    await bridge.wait_scalar(
        "SELECT count(*) FROM invite_links WHERE visit_id IS NULL AND kind = 'visitor'",
        bridge.settings.invite_pool_size,
    )
    report = (await http.get("/healthz")).json()
    assert report["database"]["ok"] is True
    assert report["database"]["schemaVersion"] >= 2
    assert report["telegram"]["lastGetUpdatesAt"] is not None
    assert report["courier"] == {"state": "running"}
    (pool,) = report["invitePools"]
    assert pool["channelId"] == str(CHANNEL_ID)
    assert pool["size"] == pool["target"] == bridge.settings.invite_pool_size


async def test_pool_refills_after_links_are_handed_out(
    bridge: RunningBridge, telegram: FakeTelegram, http: httpx.AsyncClient
) -> None:
    size = bridge.settings.invite_pool_size
    pool_sql = "SELECT count(*) FROM invite_links WHERE visit_id IS NULL AND kind = 'visitor'"
    await bridge.wait_scalar(pool_sql, size)
    for i in range(size):
        response = await post(
            http,
            "/api/v1/events/invite",
            {"tempId": f"00000000-0000-4000-8000-00000000010{i}", "channelId": CHANNEL_ID},
        )
        assert response.status_code == 200
    await bridge.wait_scalar(pool_sql, size)
    assert len(telegram.calls_to("createChatInviteLink")) >= 2 * size


async def test_cors_rate_limit_and_token(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    settings = bridge_settings(
        tmp_path,
        telegram,
        adtarget,
        tracker_allowed_origins="https://landing.example",
        tracker_token="s3cret-token",
        tracker_rate_per_minute=60,
        tracker_burst=3,
    )
    running = RunningBridge(settings)
    await running.start()
    try:
        async with httpx.AsyncClient(base_url=running.bridge.tracker_url) as http:
            preflight = await http.options(
                "/api/v1/events/visit",
                headers={
                    "Origin": "https://landing.example",
                    "Access-Control-Request-Method": "POST",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "https://landing.example"
            assert "Authorization" in preflight.headers["access-control-allow-headers"]
            foreign = await http.options(
                "/api/v1/events/visit",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert "access-control-allow-origin" not in foreign.headers
            no_token = await post(http, "/api/v1/events/visit", {"href": PAGE})
            assert no_token.status_code == 401
            assert no_token.json()["error"]["code"] == "AUTH_REQUIRED"
            # Burst 3: the refused request above and two more pass, the next is limited.
            statuses = [
                (
                    await post(
                        http,
                        "/api/v1/events/visit",
                        {"href": PAGE},
                        Authorization="Bearer s3cret-token",
                    )
                )
                for _ in range(3)
            ]
            assert [r.status_code for r in statuses] == [200, 200, 429]
            limited = statuses[-1]
            assert limited.json()["error"]["code"] == "RATE_LIMITED"
            assert int(limited.headers["retry-after"]) >= 1
    finally:
        assert await running.stop() == 0
