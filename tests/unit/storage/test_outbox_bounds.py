"""Bounds on the outbox (issue 17, M3 and M4), against the real bridge and the
fake AdTarget over loopback.

Visit and update-fbp forwards are best effort: conversions go before them, and
beyond OUTBOX_FORWARDS_MAX queued, or past OUTBOX_FORWARDS_MAX_AGE, they are
dropped and counted; conversions never are. A row whose request cannot be built
(a header value HTTP cannot carry) is parked at once: no retry, no request, no
pacing token.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.adtarget.client import AdTargetClient
from bot.adtarget.errors import Unsendable
from bot.adtarget.wire import CLIENT_UA_HEADER
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from bot.token_bucket import TokenBucket
from bot.tracker.visits import ForwardCap
from storage import outbox
from storage.db import Database
from tests.harness import CHANNEL_ID, RunningBridge, StartBridge, eventually
from tests.unit.ops.test_metrics import scrape, value

VISIT = "/api/v1/events/visit"
UPDATE_FBP = "/api/v1/events/update-fbp"
CONVERSION = "/api/v1/events/conversion"
FORWARDS = (VISIT, UPDATE_FBP)
DROPPED = "joinbridge_outbox_dropped_total"
QUEUED_FORWARDS = (
    "SELECT count(*) FROM outbox WHERE kind IN ('visit', 'update_fbp')"
    " AND state IN ('pending', 'sending')"
)


def temp_id(n: int) -> str:
    return f"7e000000-0000-4000-8000-{n:012d}"


async def tracker_post(running: RunningBridge, path: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=running.bridge.tracker_url, timeout=10) as http:
        answer = await http.post(path, json=body)
    assert answer.status_code == 200, answer.text


async def visit(running: RunningBridge, n: int) -> None:
    await tracker_post(
        running, VISIT, {"tempId": temp_id(n), "href": f"https://landing.example/?fbclid=F{n}"}
    )


async def join(running: RunningBridge, telegram: FakeTelegram, user_id: int) -> None:
    url = await running.mint(temp_id(user_id), fbc=f"fb.1.1.{user_id}")
    telegram.join(CHANNEL_ID, user_id, url)


async def queue_stored_visit(running: RunningBridge, n: int, user_agent: str) -> int:
    """A visit forward as an older version may have stored it, header and all."""
    async with running.bridge.db.transaction() as tx:
        row_id = await outbox.enqueue(
            tx,
            outbox.NewRow(
                kind="visit",
                path="/events/visit",
                body={"tempId": temp_id(n), "href": "https://landing.example/"},
                headers={CLIENT_UA_HEADER: user_agent},
                idempotency_key=f"jb-visit-stored-{n}",
                priority=outbox.FORWARD_PRIORITY,
            ),
        )
    assert row_id is not None
    running.bridge.courier.wake()
    return row_id


async def test_a_conversion_is_sent_before_forwards_queued_ahead_of_it(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # One send at a time, so the order of claims is the order AdTarget sees.
    running = await start_bridge(courier_concurrency=1)
    courier = running.bridge.courier
    await courier.pause_manually("the test")
    for n in range(5):
        await visit(running, n)
    await join(running, telegram, 7100001)
    await running.wait_scalar("SELECT count(*) FROM outbox WHERE kind = 'conversion'", 1)
    before = len(adtarget.received)

    await courier.resume_manually("the test")
    await running.wait_scalar("SELECT count(*) FROM outbox WHERE state = 'delivered'", 6)
    sent = [r.path for r in adtarget.received[before:] if r.method == "POST"]
    assert sent == [CONVERSION] + [VISIT] * 5


async def test_past_the_cap_forwards_are_dropped_while_conversions_deliver(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # AdTarget refuses forwards for now: they stay queued, retrying.
    adtarget.fail(503, "API_DISABLED", paths=FORWARDS)
    running = await start_bridge(outbox_forwards_max=3, adtarget_rate_per_minute=6000)
    for n in range(5):
        await visit(running, n)  # every visit is answered and stored all the same
    await tracker_post(running, UPDATE_FBP, {"tempId": temp_id(0), "fbp": "fb.1.2.late"})
    assert await running.scalar("SELECT count(*) FROM visits") == 5
    assert await running.scalar("SELECT fbp FROM visits WHERE temp_id = ?", (temp_id(0),)) == (
        "fb.1.2.late"
    )
    assert await running.scalar("SELECT count(*) FROM outbox") == 3
    assert await running.scalar(QUEUED_FORWARDS) == 3
    samples = await scrape(running.bridge)
    assert value(samples, DROPPED, kind="visit", reason="cap") == 2
    assert value(samples, DROPPED, kind="update_fbp", reason="cap") == 1
    assert value(samples, DROPPED, kind="visit", reason="age") == 0

    await join(running, telegram, 7100002)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 7100002
    await running.wait_scalar("SELECT state FROM outbox WHERE kind = 'conversion'", "delivered")
    assert await running.scalar(QUEUED_FORWARDS) == 3
    samples = await scrape(running.bridge)
    assert value(samples, DROPPED, kind="visit", reason="cap") == 2


async def test_forwards_past_their_age_are_dropped_and_conversions_never(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    adtarget.fail(503, "API_DISABLED")  # nothing is delivered meanwhile
    running = await start_bridge(outbox_forwards_max_age=2.0, adtarget_rate_per_minute=6000)
    # The conversion first: it is the oldest row when the forwards age out.
    await join(running, telegram, 7100003)
    await running.wait_scalar("SELECT count(*) FROM outbox WHERE kind = 'conversion'", 1)
    await visit(running, 1)
    await visit(running, 2)
    await tracker_post(running, UPDATE_FBP, {"tempId": temp_id(1), "fbp": "fb.1.2.late"})
    parked = await queue_stored_visit(running, 3, "Mozilla/5.0\x00")
    await running.wait_scalar("SELECT state FROM outbox WHERE id = ?", "parked", (parked,))

    await running.wait_scalar("SELECT count(*) FROM outbox WHERE kind != 'conversion'", 0)
    samples = await scrape(running.bridge)
    assert value(samples, DROPPED, kind="visit", reason="age") == 3  # the parked one too
    assert value(samples, DROPPED, kind="update_fbp", reason="age") == 1
    assert value(samples, DROPPED, kind="visit", reason="cap") == 0
    # Older than the forwards were, and kept.
    assert await running.scalar("SELECT state FROM outbox WHERE kind = 'conversion'") in (
        "pending",
        "sending",
    )

    adtarget.clear_faults()
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 7100003
    await running.wait_scalar("SELECT state FROM outbox WHERE kind = 'conversion'", "delivered")


async def test_a_row_whose_header_cannot_be_sent_is_parked_at_once(
    start_bridge: StartBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # A burst of two tokens and then one a minute: the start-up GET /channels
    # takes one, and the other must still be there for a conversion afterwards.
    running = await start_bridge(adtarget_rate_per_minute=1, adtarget_burst=2)
    await eventually(lambda: bool(adtarget.received_on("/api/v1/channels")))
    agents = {
        "Mozilla/5.0\x00": "control characters",
        "Mozilla/5.0\r\nX-Injected: 1": "control characters",
        "Mozillä/5.0": "non-ASCII characters",
    }
    rows = {await queue_stored_visit(running, n, a): a for n, a in enumerate(agents)}
    for row_id, agent in rows.items():
        await running.wait_scalar("SELECT state FROM outbox WHERE id = ?", "parked", (row_id,))
        stored = await outbox.get(running.bridge.db, row_id)
        assert stored is not None
        assert stored["parked_reason"] == (
            f"request cannot be built: header X-Adtarget-Client-User-Agent: contains"
            f" {agents[agent]}"
        )
        assert stored["attempts"] == 1  # tried once, never again
        assert len(json.loads(stored["errors"])) == 1
    assert adtarget.received_on(VISIT) == []
    assert running.bridge.adtarget.pacer.ready(), "no pacing token was spent on them"

    await join(running, telegram, 7100004)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 7100004
    assert adtarget.received_on(VISIT) == []


@pytest.mark.parametrize(
    ("agent", "problem"),
    [
        ("Mozilla/5.0\x00", "contains control characters"),
        ("Mozilla/5.0\nX-Injected: 1", "contains control characters"),
        ("Mozilla/5.0\x7f", "contains control characters"),
        ("Mozilla/5.0 (Linux; Android 14) Mözilla", "contains non-ASCII characters"),
        ("Mozilla/5.0 (X11; Linux x86_64)\tGecko", None),
    ],
)
async def test_the_client_refuses_a_header_value_before_taking_a_token(
    agent: str, problem: str | None
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"visitId": "v"})

    pacer = TokenBucket(1 / 60, 1)
    client = AdTargetClient(
        "https://adtarget.example",
        SecretStr("atk_live_abcd1234_0123456789abcdefghijklmnopqrstuv"),
        pacer=pacer,
        transport=httpx.MockTransport(handler),
    )
    try:
        post = client.post(
            "/events/visit", {"href": "x"}, idempotency_key="k", headers={CLIENT_UA_HEADER: agent}
        )
        if problem is None:
            await post
            assert [r.headers[CLIENT_UA_HEADER] for r in seen] == [agent]
            return
        with pytest.raises(Unsendable) as refused:
            await post
    finally:
        await client.aclose()
    assert refused.value.message == f"header {CLIENT_UA_HEADER}: {problem}"
    assert seen == []
    assert pacer.ready()


async def test_at_the_cap_the_room_is_counted_again_while_forwards_keep_coming() -> None:
    cap = ForwardCap(2)
    assert cap.wants_count(1)  # nothing counted yet
    cap.counted(0)
    assert cap.take(3) == 2

    def flood_then_ask() -> bool:
        assert cap.take(1) == 0  # dropped, and the flood goes on
        return cap.wants_count(1)

    await eventually(flood_then_ask, interval=0.01, what="a count while dropping")
    cap.counted(1)  # the courier sent one meanwhile
    assert cap.take(2) == 1


async def test_only_forwards_waiting_or_parked_are_dropped_by_age(engine_db: Database) -> None:
    def row(kind: str, key: str, priority: int) -> outbox.NewRow:
        return outbox.NewRow(
            kind=kind, path=f"/{kind}", body={}, idempotency_key=key, priority=priority
        )

    queued = [
        row("conversion", "conversion", 0),
        row("lead_event", "stay-signal", 1),  # a follow-up beside the forwards
        row("visit", "visit-pending", 1),
        row("update_fbp", "fbp-pending", 1),
        row("visit", "visit-parked", 1),
        row("visit", "visit-sending", 1),
        row("visit", "visit-delivered", 1),
    ]
    ids: dict[str, int] = {}
    async with engine_db.transaction() as tx:
        for new in queued:
            row_id = await outbox.enqueue(tx, new)
            assert row_id is not None
            ids[new.idempotency_key] = row_id
    assert len(await outbox.claim(engine_db, limit=len(queued), lease=60)) == len(queued)
    await outbox.park(engine_db, ids["visit-parked"], attempt=1, reason="refused")
    await outbox.mark_delivered(
        engine_db,
        ids["visit-delivered"],
        conversion_id=None,
        dispatched=None,
        warning=None,
        replayed=False,
    )
    waiting = ["conversion", "stay-signal", "visit-pending", "fbp-pending"]
    await outbox.hand_back(engine_db, [ids[key] for key in waiting])

    assert await outbox.drop_aged_forwards(engine_db, max_age=3600) == []
    dropped = await outbox.drop_aged_forwards(engine_db, max_age=3600, now=time.time() + 7200)
    assert sorted(dropped) == ["update_fbp", "visit", "visit"]
    kept = {r[0] for r in await engine_db.fetchall("SELECT idempotency_key FROM outbox")}
    assert kept == {"conversion", "stay-signal", "visit-sending", "visit-delivered"}
