"""GET /metrics end to end: the real bridge against the fakes, scraped over HTTP.

Every value is compared before and after an action, and waited for by polling
the scrape (never by sleeping): counters move exactly as the action says.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from bot.app import Bridge
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import channels
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, RunningBridge, bridge_settings, eventually

CONVERSION = "/api/v1/events/conversion"
TEMP_ID = "5b0c2d1e-7a4f-4e6b-8c9d-0e1f2a3b4c5d"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(bridge: Bridge, **headers: str) -> Samples:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    async with httpx.AsyncClient(base_url=bridge.tracker_url, timeout=10) as http:
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def settled(bridge: Bridge, adtarget: FakeAdTarget) -> Samples:
    """A scrape once every request AdTarget has received has been answered and
    counted (the start-up GET /channels included)."""
    found: Samples = {}

    async def counted_all() -> bool:
        nonlocal found
        found = await scrape(bridge)
        answers = sum(v for (n, _), v in found.items() if n == "joinbridge_adtarget_answers_total")
        return answers == len(adtarget.received)

    await eventually(counted_all, what="AdTarget answers counted")
    return found


async def scrape_until(bridge: Bridge, name: str, at_least: float, **labels: str) -> Samples:
    found: Samples = {}

    async def reached() -> bool:
        nonlocal found
        found = await scrape(bridge)
        return value(found, name, **labels) >= at_least

    await eventually(reached, what=f"{name}{labels} >= {at_least}")
    return found


async def join_through_minted_link(
    running: RunningBridge, telegram: FakeTelegram, user: int
) -> None:
    url = await running.mint(f"00000000-0000-4000-8000-{user:012d}", fbc=f"fb.1.1.{user}")
    telegram.join(CHANNEL_ID, user, url)


async def start(
    tmp_path: Path,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    started: list[RunningBridge],
    **overrides: Any,
) -> RunningBridge:
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, **overrides))
    await running.start()
    started.append(running)
    await running.track_channel(telegram)
    return running


async def test_values_move_exactly_as_joins_are_processed(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    before = await settled(bridge.bridge, adtarget)
    channel = await channels.get(bridge.bridge.db, CHANNEL_ID)
    assert channel is not None
    campaign = await bridge.bridge.minter.mint_campaign(channel, "spring-post")

    await join_through_minted_link(bridge, telegram, 7100001)
    await join_through_minted_link(bridge, telegram, 7100002)
    telegram.join(CHANNEL_ID, 7100003, campaign.url)
    telegram.join(CHANNEL_ID, 7100004)  # no link: organic, recorded and not sent
    telegram.leave(CHANNEL_ID, 7100002)
    await adtarget.wait_for_conversions(3)
    after = await scrape_until(
        bridge.bridge,
        "joinbridge_outbox_outcomes_total",
        value(before, "joinbridge_outbox_outcomes_total", kind="conversion", outcome="delivered")
        + 3,
        kind="conversion",
        outcome="delivered",
    )
    after = await scrape_until(bridge.bridge, "joinbridge_leaves_total", 1)

    assert moved(before, after, "joinbridge_updates_received_total", kind="chat_member") == 5
    assert moved(before, after, "joinbridge_joins_total", kind="attributed") == 2
    assert moved(before, after, "joinbridge_joins_total", kind="campaign") == 1
    assert moved(before, after, "joinbridge_joins_total", kind="organic") == 1
    assert moved(before, after, "joinbridge_leaves_total") == 1
    delivered = {"kind": "conversion", "outcome": "delivered"}
    assert moved(before, after, "joinbridge_outbox_outcomes_total", **delivered) == 3
    for outcome in ("replayed", "retried", "parked", "paused"):
        labels = {"kind": "conversion", "outcome": outcome}
        assert value(after, "joinbridge_outbox_outcomes_total", **labels) == 0
    assert moved(before, after, "joinbridge_adtarget_answers_total", status="200") == 3
    assert value(after, "joinbridge_adtarget_answers_total", status="error") == 0
    histogram = "joinbridge_adtarget_request_duration_seconds_count"
    assert moved(before, after, histogram) == 3
    top_bucket = "joinbridge_adtarget_request_duration_seconds_bucket"
    assert value(after, top_bucket, le="+Inf") == value(after, histogram)
    assert value(after, "joinbridge_outbox_rows", state="pending") == 0
    assert value(after, "joinbridge_outbox_rows", state="sending") == 0
    assert value(after, "joinbridge_outbox_rows", state="delivered") == 3
    assert value(after, "joinbridge_outbox_rows", state="parked") == 0
    assert value(after, "joinbridge_outbox_oldest_pending_age_seconds") == 0
    assert value(after, "joinbridge_courier_paused") == 0
    assert value(after, "joinbridge_database_ok") == 1
    assert value(after, "joinbridge_updates_failed_total", kind="chat_member") == 0
    assert value(after, "joinbridge_updates_waiting_retry") == 0


async def test_a_repeated_leave_and_a_redelivered_update_are_not_counted_again(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    settings = bridge_settings(tmp_path, telegram, adtarget)
    first = RunningBridge(settings)
    await first.start()
    try:
        await first.track_channel(telegram)
        before = await scrape(first.bridge)
        leave = telegram.leave(CHANNEL_ID, 7200001, date=1764100400)
        assert leave is not None
        # Telegram reporting the same leave again, in an update of its own.
        again = telegram.enqueue("chat_member", telegram.history[leave]["chat_member"])
        assert again is not None
        done = "SELECT count(*) FROM updates WHERE state = 'done' AND update_id IN (?, ?)"
        await first.wait_scalar(done, 2, (leave, again))
        after = await scrape(first.bridge)
        assert moved(before, after, "joinbridge_updates_received_total", kind="chat_member") == 2
        assert moved(before, after, "joinbridge_leaves_total") == 1
    finally:
        assert await first.stop() == 0

    # The confirmation was lost: Telegram serves the handled leave again to a new poller.
    telegram.requeue(leave)
    second = RunningBridge(settings)
    await second.start()
    try:
        await telegram.wait_confirmed(leave)
        samples = await scrape(second.bridge)
        assert value(samples, "joinbridge_updates_received_total", kind="chat_member") == 0
        assert value(samples, "joinbridge_leaves_total") == 0
    finally:
        assert await second.stop() == 0


async def test_pool_size_gauge_equals_the_pool(bridge: RunningBridge) -> None:
    target = bridge.bridge.pool.size

    async def full() -> bool:
        return [p.size for p in await bridge.bridge.pool.states()] == [target]

    await eventually(full, what="invite pool filled")
    samples = await scrape(bridge.bridge)
    (pool,) = await bridge.bridge.pool.states()
    labels = {"channel": str(CHANNEL_ID), "mode": pool.mode}
    assert value(samples, "joinbridge_invite_pool_links", **labels) == pool.size == target
    assert value(samples, "joinbridge_invite_pool_target_links", **labels) == target
    assert value(samples, "joinbridge_invite_links_minted_total") >= target


async def test_visits_and_invites_handed_out_through_the_tracker(
    bridge: RunningBridge, adtarget: FakeAdTarget
) -> None:
    before = await settled(bridge.bridge, adtarget)
    async with httpx.AsyncClient(base_url=bridge.bridge.tracker_url, timeout=10) as http:
        visit = await http.post(
            "/api/v1/events/visit", json={"tempId": TEMP_ID, "href": "https://landing.example/"}
        )
        assert visit.status_code == 200
        invite = await http.post(
            "/api/v1/events/invite", json={"tempId": TEMP_ID, "channelId": str(CHANNEL_ID)}
        )
        assert invite.status_code == 200
        refused = await http.post(
            "/api/v1/events/invite", json={"tempId": TEMP_ID, "channelId": "-100999"}
        )
        assert refused.status_code == 404
    after = await scrape_until(
        bridge.bridge, "joinbridge_outbox_outcomes_total", 1, kind="visit", outcome="delivered"
    )
    assert moved(before, after, "joinbridge_visits_recorded_total") == 1
    assert moved(before, after, "joinbridge_invites_handed_out_total") == 1  # not the 404
    assert moved(before, after, "joinbridge_adtarget_answers_total", status="200") == 1


async def test_a_parked_row_shows_in_the_gauge_and_the_counter(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    before = await settled(bridge.bridge, adtarget)
    adtarget.fail(400, "INVALID_PAYLOAD", "eventTime: too old", count=1, paths=(CONVERSION,))
    await join_through_minted_link(bridge, telegram, 7200001)
    parked = {"kind": "conversion", "outcome": "parked"}
    await scrape_until(bridge.bridge, "joinbridge_outbox_outcomes_total", 1, **parked)
    # The database gauges are read at the start of a scrape, the counters at its end:
    # one scrape may see the counter moved and the row not yet parked.
    after = await scrape_until(bridge.bridge, "joinbridge_outbox_rows", 1, state="parked")
    assert moved(before, after, "joinbridge_outbox_outcomes_total", **parked) == 1
    assert value(after, "joinbridge_outbox_rows", state="parked") == 1
    assert value(after, "joinbridge_outbox_rows", state="pending") == 0
    assert moved(before, after, "joinbridge_adtarget_answers_total", status="400") == 1
    assert (
        value(after, "joinbridge_outbox_outcomes_total", kind="conversion", outcome="delivered")
        == 0
    )


async def test_failures_are_counted_by_kind(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    before = await settled(bridge.bridge, adtarget)
    adtarget.drop_connections(count=1, paths=(CONVERSION,))
    telegram.fail_next("getUpdates", 502, "Bad Gateway")
    await join_through_minted_link(bridge, telegram, 7300001)
    delivered = {"kind": "conversion", "outcome": "delivered"}
    after = await scrape_until(bridge.bridge, "joinbridge_outbox_outcomes_total", 1, **delivered)
    after = await scrape_until(
        bridge.bridge,
        "joinbridge_telegram_errors_total",
        1,
        method="getUpdates",
        kind="server_error",
    )
    assert moved(before, after, "joinbridge_adtarget_answers_total", status="error") == 1
    assert moved(before, after, "joinbridge_adtarget_answers_total", status="200") == 1
    # The dropped send and the delivered one: both timed.
    assert moved(before, after, "joinbridge_adtarget_request_duration_seconds_count") == 2
    retried = {"kind": "conversion", "outcome": "retried"}
    assert moved(before, after, "joinbridge_outbox_outcomes_total", **retried) == 1
    errors = {"method": "getUpdates", "kind": "server_error"}
    assert moved(before, after, "joinbridge_telegram_errors_total", **errors) == 1


async def test_two_bridges_in_one_process_do_not_share_counters(
    tmp_path: Path,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    custom_bridge: list[RunningBridge],
) -> None:
    other_telegram = FakeTelegram()
    await other_telegram.start()
    other_telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
    other_adtarget = FakeAdTarget()
    await other_adtarget.start()
    try:
        first = await start(tmp_path / "first", telegram, adtarget, custom_bridge)
        second = await start(tmp_path / "second", other_telegram, other_adtarget, custom_bridge)
        assert first.bridge.metrics.registry is not second.bridge.metrics.registry
        await join_through_minted_link(first, telegram, 7400001)
        await adtarget.wait_for_conversions(1)
        one = await scrape_until(first.bridge, "joinbridge_joins_total", 1, kind="attributed")
        two = await scrape(second.bridge)
        assert value(one, "joinbridge_joins_total", kind="attributed") == 1
        assert value(two, "joinbridge_joins_total", kind="attributed") == 0
        assert value(two, "joinbridge_updates_received_total", kind="chat_member") == 0
        # Each counts the answers of its own AdTarget, and only those.
        one = await settled(first.bridge, adtarget)
        two = await settled(second.bridge, other_adtarget)
        assert value(one, "joinbridge_adtarget_answers_total", status="200") == len(
            adtarget.received
        )
        assert value(two, "joinbridge_adtarget_answers_total", status="200") == len(
            other_adtarget.received
        )
        assert len(adtarget.received) > len(other_adtarget.received)  # the conversion
        # Nothing is registered in prometheus-client's process-wide default registry.
        assert not [
            m.name for m in prometheus_client.REGISTRY.collect() if m.name.startswith("joinbridge_")
        ]
        for running in custom_bridge:
            assert await running.stop() == 0
    finally:
        await other_adtarget.stop()
        await other_telegram.stop()


async def test_the_token_guards_metrics_without_rate_limit_or_cors(
    tmp_path: Path,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    custom_bridge: list[RunningBridge],
) -> None:
    running = await start(
        tmp_path,
        telegram,
        adtarget,
        custom_bridge,
        tracker_token="s3cret-token",
        tracker_rate_per_minute=60,
        tracker_burst=1,
        tracker_allowed_origins="https://landing.example",
    )
    async with httpx.AsyncClient(base_url=running.bridge.tracker_url, timeout=10) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "AUTH_REQUIRED"
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        auth = {"Authorization": "Bearer s3cret-token", "Origin": "https://landing.example"}
        # A burst of 1 a minute would refuse the second public request; scrapes pass.
        statuses = await asyncio.gather(*(http.get("/metrics", headers=auth) for _ in range(4)))
        assert [r.status_code for r in statuses] == [200] * 4
        assert all("access-control-allow-origin" not in r.headers for r in statuses)
        assert "joinbridge_courier_paused 0.0" in statuses[0].text
        # The token never shows in the exposition.
        assert all("s3cret-token" not in r.text for r in statuses)


async def test_metrics_disabled_answers_404(
    tmp_path: Path,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    custom_bridge: list[RunningBridge],
) -> None:
    running = await start(tmp_path, telegram, adtarget, custom_bridge, metrics_enabled=False)
    async with httpx.AsyncClient(base_url=running.bridge.tracker_url, timeout=10) as http:
        response = await http.get("/metrics")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
        assert (await http.get("/healthz")).status_code == 200
