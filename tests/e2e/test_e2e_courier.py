"""The courier against AdTarget's failure modes: nothing lost, nothing sent twice."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, RunningBridge, StartBridge, eventually, start_tracked

CONVERSION = "/api/v1/events/conversion"


async def join_through_minted_link(
    running: RunningBridge, telegram: FakeTelegram, user_id: int
) -> None:
    url = await running.mint(f"00000000-0000-4000-8000-{user_id:012d}", fbc=f"fb.1.1.{user_id}")
    telegram.join(CHANNEL_ID, user_id, url)


def keys_sent(adtarget: FakeAdTarget) -> list[str]:
    return [r.headers["idempotency-key"] for r in adtarget.received_on(CONVERSION)]


async def test_503_for_a_while_then_delivered_once(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.fail(503, "API_DISABLED", seconds=0.6)
    await join_through_minted_link(bridge, telegram, 7000001)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 7000001
    sent = keys_sent(adtarget)
    assert len(sent) >= 2, "the 503s should have been retried"
    assert len(set(sent)) == 1, "every retry carries the same Idempotency-Key"
    await bridge.wait_scalar("SELECT state FROM outbox", "delivered")
    errors = json.loads(await bridge.scalar("SELECT errors FROM outbox"))
    assert errors
    assert errors[0]["error"].startswith("HTTP 503 API_DISABLED")


async def test_timeout_after_processing_is_not_a_duplicate(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # Processed, but the answer comes after the bridge's 1 s timeout.
    adtarget.process_then_delay(1.5, paths=(CONVERSION,))
    await join_through_minted_link(bridge, telegram, 7000002)
    await bridge.wait_scalar("SELECT state FROM outbox", "delivered")
    assert len(adtarget.conversions) == 1
    assert len(adtarget.received_on(CONVERSION)) >= 2
    assert await bridge.scalar("SELECT replayed FROM outbox") == 1


async def test_dropped_connection_is_retried(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.drop_connections(count=2, paths=(CONVERSION,))
    await join_through_minted_link(bridge, telegram, 7000003)
    await adtarget.wait_for_conversions(1)
    await bridge.wait_scalar("SELECT state FROM outbox", "delivered")
    assert len(adtarget.conversions) == 1


async def test_429_retry_after_is_honoured(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    # AdTarget allows one request a second; the bridge's own pacing is set far
    # looser, so its second send draws a real 429 with Retry-After.
    running = await start_bridge(adtarget_rate_per_minute=6000, adtarget_burst=50)
    # After the start-up GET /channels, so that call does not spend the one token.
    await eventually(lambda: bool(adtarget.received_on("/api/v1/channels")))
    adtarget.set_rate(rate_per_minute=60, burst=1)
    await join_through_minted_link(running, telegram, 7000004)
    await join_through_minted_link(running, telegram, 7000005)
    await adtarget.wait_for_conversions(2)
    received = adtarget.received_on(CONVERSION)
    limited = [i for i, r in enumerate(received) if r.status == 429]
    assert limited, "the test needs a 429 to have been drawn"
    retry_after = float(received[limited[0]].answer_headers["retry-after"])
    later = received[limited[0] + 1 :]
    assert later
    assert later[0].at - received[limited[0]].at >= retry_after - 0.05
    # Waited out, not hammered: one 429, then success.
    assert adtarget.status_counts()[429] == 1


async def test_pacing_queues_a_burst_instead_of_drawing_429s(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    # 10/s after a burst of 5 at AdTarget, 7.5/s after 3 at the bridge. The margin
    # absorbs a stall of up to ~0.4 s that holds some sends back and lets them
    # arrive together (the fake shares this busy process with the test).
    adtarget.set_rate(rate_per_minute=600, burst=5)
    running = await start_bridge(adtarget_rate_per_minute=450, adtarget_burst=3)
    for user_id in range(7000100, 7000112):
        await join_through_minted_link(running, telegram, user_id)
    await adtarget.wait_for_conversions(12, timeout=15)
    assert adtarget.status_counts().get(429, 0) == 0
    times = [r.at for r in adtarget.received_on(CONVERSION)]
    # 12 sends at 7.5/s after a burst of 3 need at least ~1.2 s.
    assert times[-1] - times[0] >= 0.9


async def test_401_pauses_keeps_everything_and_resumes(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.set_key("atk_live_other000_0123456789abcdefghijklmnopqrstuv")
    for user_id in (7000201, 7000202, 7000203):
        await join_through_minted_link(bridge, telegram, user_id)
    await bridge.wait_scalar("SELECT count(*) FROM bridge_state WHERE key = 'courier_paused'", 1)
    assert bridge.bridge.courier.pause is not None
    assert "401" in bridge.bridge.courier.pause.reason
    await asyncio.sleep(0.5)
    assert adtarget.conversions == []
    assert await bridge.scalar("SELECT count(*) FROM outbox WHERE state = 'parked'") == 0
    # While paused only single probes go out, not the whole queue every time.
    requests_while_paused = len(adtarget.received_on(CONVERSION))
    assert requests_while_paused <= 3 + 4  # the in-flight sends plus a probe or two

    adtarget.set_key(FakeAdTarget.API_KEY)
    await adtarget.wait_for_conversions(3)
    await bridge.wait_scalar("SELECT count(*) FROM outbox WHERE state = 'delivered'", 3)
    assert bridge.bridge.courier.pause is None
    assert await bridge.scalar("SELECT count(*) FROM bridge_state") == 0


async def test_402_pauses_and_resumes_when_billing_is_back(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.fail(402, "SUBSCRIPTION_INACTIVE", seconds=0.8, paths=(CONVERSION,))
    await join_through_minted_link(bridge, telegram, 7000301)
    await bridge.wait_scalar("SELECT count(*) FROM bridge_state WHERE key = 'courier_paused'", 1)
    await adtarget.wait_for_conversions(1)
    await bridge.wait_scalar("SELECT state FROM outbox", "delivered")


async def test_invalid_payload_is_parked_with_its_reason(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.fail(400, "INVALID_PAYLOAD", "fbc: malformed", count=1, paths=(CONVERSION,))
    await join_through_minted_link(bridge, telegram, 7000401)
    await bridge.wait_scalar("SELECT state FROM outbox", "parked")
    reason = await bridge.scalar("SELECT parked_reason FROM outbox")
    assert reason == "HTTP 400 INVALID_PAYLOAD: fbc: malformed"
    await asyncio.sleep(0.3)
    assert len(adtarget.received_on(CONVERSION)) == 1, "a 400 is not retried"


async def test_unknown_channel_is_parked(
    tmp_path: Path,
    telegram: FakeTelegram,
    custom_bridge: list[RunningBridge],
) -> None:
    channels = [{"channelId": "ch_other", "telegramChannelId": "-1009", "title": "Other"}]
    adtarget = FakeAdTarget(channels=channels)
    await adtarget.start()
    try:
        running = await start_tracked(tmp_path, telegram, adtarget)
        custom_bridge.append(running)
        await join_through_minted_link(running, telegram, 7000501)
        await running.wait_scalar("SELECT state FROM outbox", "parked")
        reason = await running.scalar("SELECT parked_reason FROM outbox")
        assert reason.startswith("HTTP 404 CHANNEL_NOT_FOUND")
        assert await running.stop() == 0
    finally:
        await adtarget.stop()


async def test_retries_stop_at_the_retry_window_and_park(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    adtarget.fail(500, "INTERNAL_ERROR", paths=(CONVERSION,))
    running = await start_bridge(retry_window=0.5)
    await join_through_minted_link(running, telegram, 7000601)
    await running.wait_scalar("SELECT state FROM outbox", "parked")
    reason = await running.scalar("SELECT parked_reason FROM outbox")
    assert "gave up after" in reason
    assert "HTTP 500 INTERNAL_ERROR" in reason


async def test_past_the_idempotency_window_the_lead_is_checked_before_resending(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    # AdTarget processes the conversion but the answer is lost (timeout); by the
    # time the row is retried, its first attempt is older than the window.
    adtarget.process_then_delay(1.5, paths=(CONVERSION,))
    running = await start_bridge(idempotency_window=0.2, backoff_base=0.4, backoff_cap=0.4)
    await join_through_minted_link(running, telegram, 7000701)
    await running.wait_scalar("SELECT state FROM outbox", "delivered")
    assert len(adtarget.received_on(CONVERSION)) == 1, "the retry was not sent"
    assert adtarget.received_on("/api/v1/leads/7000701")
    conversion_id = await running.scalar("SELECT conversion_id FROM outbox")
    assert conversion_id == adtarget.conversions[0]["conversionId"]


async def test_join_is_posted_promptly(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    """Woken by the new row, not by a timer: well within a second (a generous bound,
    as machines are shared; the latency figures come from bench/)."""
    url = await bridge.mint("00000000-0000-4000-8000-000000000801", fbc="fb.1.1.p")
    started = time.monotonic()
    telegram.join(CHANNEL_ID, 7000801, url)
    await adtarget.wait_for_conversions(1)
    assert time.monotonic() - started < 5
