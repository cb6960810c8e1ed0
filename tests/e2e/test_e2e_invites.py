"""Invite links under Telegram's limits, and join-request mode end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import channels
from tests.harness import CHANNEL_ID, RunningBridge, bridge_settings

TEMP_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


async def test_200_invites_while_telegram_limits_link_creation(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.limit_method("createChatInviteLink", per_minute=20)
    running = RunningBridge(
        bridge_settings(
            tmp_path,
            telegram,
            adtarget,
            invite_pool_size=15,
            tracker_rate_per_minute=100_000,
            tracker_burst=1000,
        )
    )
    await running.start()
    try:
        await running.track_channel(telegram)
        await running.wait_scalar(
            "SELECT count(*) FROM invite_links WHERE visit_id IS NULL AND kind = 'visitor'", 15
        )
        async with httpx.AsyncClient(base_url=running.bridge.tracker_url, timeout=10) as http:
            responses = await asyncio.gather(
                *(
                    http.post(
                        "/api/v1/events/invite",
                        json={
                            "tempId": f"00000000-0000-4000-8000-{i:012d}",
                            "channelId": str(CHANNEL_ID),
                        },
                        # The landing page's server names each visitor: 200 clients,
                        # none of them near its quota.
                        headers={"X-Adtarget-Client-IP": f"198.51.{i // 250}.{i % 250 + 1}"},
                    )
                    for i in range(200)
                )
            )
        assert {r.status_code for r in responses} == {200}
        answers = [r.json() for r in responses]
        personal = [a["inviteLink"] for a in answers if not a["fallback"]]
        # The pool (15) and whatever Telegram still allowed this minute, less the
        # fallback link minted before the pool.
        assert 15 <= len(personal) <= 19
        assert len(set(personal)) == len(personal), "a link is never given to two visitors"
        # Everyone else is sent to the channel's fallback link, not refused.
        fallback = {a["inviteLink"] for a in answers if a["fallback"]}
        assert len(fallback) == 1
        assert fallback.isdisjoint(personal)
        async with httpx.AsyncClient(base_url=running.bridge.tracker_url) as http:
            report = (await http.get("/healthz")).json()
        assert report["telegramWaitSeconds"] > 0
    finally:
        assert await running.stop() == 0


async def request_mode_bridge(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> RunningBridge:
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget))
    await running.start()
    await running.track_channel(telegram)
    await channels.set_mode(running.bridge.db, CHANNEL_ID, "request")
    running.bridge.pool.wake()
    return running


async def invite_link(running: RunningBridge, temp_id: str) -> str:
    async with httpx.AsyncClient(base_url=running.bridge.tracker_url) as http:
        await http.post(
            "/api/v1/events/visit",
            json={"tempId": temp_id, "href": "https://landing.example/?fbclid=REQ1"},
        )
        response = await http.post(
            "/api/v1/events/invite", json={"tempId": temp_id, "channelId": str(CHANNEL_ID)}
        )
    assert response.status_code == 200
    return str(response.json()["inviteLink"])


async def test_join_request_is_approved_and_reported_once(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = await request_mode_bridge(tmp_path, telegram, adtarget)
    try:
        url = await invite_link(running, TEMP_ID)
        assert telegram.links[url]["creates_join_request"] is True
        assert "member_limit" not in telegram.links[url]
        telegram.join_request(CHANNEL_ID, 6700001, url)
        await telegram.wait_for_call("approveChatJoinRequest")
        (conversion,) = await adtarget.wait_for_conversions(1)
        assert conversion["telegramUserId"] == 6700001
        assert conversion["fbc"].endswith(".REQ1")
        # Telegram's chat_member update after the approval is the same join.
        await running.wait_scalar("SELECT count(*) FROM updates WHERE kind = 'chat_member'", 1)
        await asyncio.sleep(0.3)
        assert len(adtarget.conversions) == 1
        assert await running.scalar("SELECT count(*) FROM joins") == 1
        assert await running.scalar("SELECT state FROM join_requests") == "approved"
    finally:
        assert await running.stop() == 0


async def test_approval_is_the_join_when_telegram_sends_no_member_update(
    tmp_path: Path, adtarget: FakeAdTarget
) -> None:
    telegram = FakeTelegram(emit_member_update_on_approve=False)
    await telegram.start()
    telegram.add_channel(CHANNEL_ID, "Test Channel")
    try:
        running = await request_mode_bridge(tmp_path, telegram, adtarget)
        try:
            url = await invite_link(running, TEMP_ID)
            telegram.join_request(CHANNEL_ID, 6700002, url)
            (conversion,) = await adtarget.wait_for_conversions(1)
            assert conversion["telegramUserId"] == 6700002
            assert await running.scalar("SELECT via_join_request FROM joins") == 1
        finally:
            assert await running.stop() == 0
    finally:
        await telegram.stop()


async def test_a_request_that_cannot_be_approved_sends_nothing(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = await request_mode_bridge(tmp_path, telegram, adtarget)
    try:
        url = await invite_link(running, TEMP_ID)
        telegram.fail_next("approveChatJoinRequest", 400, "Bad Request: HIDE_REQUESTER_MISSING")
        telegram.join_request(CHANNEL_ID, 6700003, url)
        await running.wait_scalar("SELECT state FROM join_requests", "failed")
        await asyncio.sleep(0.3)
        assert adtarget.conversions == []
        assert await running.scalar("SELECT count(*) FROM joins") == 0
    finally:
        assert await running.stop() == 0


async def test_without_auto_approval_an_admins_approval_is_attributed(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = RunningBridge(
        bridge_settings(tmp_path, telegram, adtarget, approve_join_requests=False)
    )
    await running.start()
    try:
        await running.track_channel(telegram)
        await channels.set_mode(running.bridge.db, CHANNEL_ID, "request")
        url = await invite_link(running, TEMP_ID)
        telegram.join_request(CHANNEL_ID, 6700004, url)
        await running.wait_scalar("SELECT state FROM join_requests", "manual")
        assert telegram.calls_to("approveChatJoinRequest") == []
        # An admin approves in the Telegram app: Telegram reports the join with the link.
        telegram.join(CHANNEL_ID, 6700004, url, via_join_request=True)
        (conversion,) = await adtarget.wait_for_conversions(1)
        assert conversion["telegramUserId"] == 6700004
    finally:
        assert await running.stop() == 0
