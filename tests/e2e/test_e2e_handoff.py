"""The short way from a join to its POST: polling gives a lone batch a head start
over the next long poll, and the join's own commit claims its conversion for
the courier, so no other round trip to SQLite comes between."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiogram.types import TelegramObject
from pydantic import SecretStr

from bot.adtarget.client import AdTargetClient
from bot.adtarget.events import EventType
from bot.joins.recorder import ChatRef, JoinSeen
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage import outbox
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, RunningBridge, StartBridge, write

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class Gate:
    """An outer middleware that holds chat_member handling until opened."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        self.entered.set()
        await self.opened.wait()
        return await handler(event, data)

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """The body runs while a handler is held (and polling had time to move on)."""
        try:
            await asyncio.wait_for(self.entered.wait(), 10)
            await asyncio.sleep(0.2)
            yield
        finally:
            self.opened.set()


@pytest.fixture
async def long_head_start(start_bridge: StartBridge) -> RunningBridge:
    """A bridge whose next long poll may wait a whole second for a small batch."""
    return await start_bridge(poll_head_start=1)


async def test_a_lone_join_is_handled_before_the_next_long_poll(
    long_head_start: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    running = long_head_start
    gate = Gate()
    running.bridge.dispatcher.chat_member.outer_middleware(gate)
    url = await running.mint("00000000-0000-4000-8000-000000009101", fbc="fb.1.1.h")
    update_id = telegram.join(CHANNEL_ID, 9100001, url)
    assert update_id is not None
    async with gate.holding():
        # Handled before it is stored (its handler only reads it), and not
        # confirmed before it is stored: the next long poll waits.
        assert (
            await running.scalar("SELECT count(*) FROM updates WHERE update_id = ?", (update_id,))
            == 0
        )
        assert telegram.confirmed_offset <= update_id
    await telegram.wait_confirmed(update_id)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 9100001


async def test_a_small_batch_of_other_updates_is_stored_then_handled_first(
    long_head_start: RunningBridge, telegram: FakeTelegram
) -> None:
    running = long_head_start
    gate = Gate()
    # The bot's own membership changes: a handler that acts, so stored first.
    running.bridge.dispatcher.my_chat_member.outer_middleware(gate)
    update_id = telegram.bot_status_change(CHANNEL_ID, "administrator")
    assert update_id is not None
    async with gate.holding():
        # Stored (so safe to confirm), but the next long poll waits for the handling.
        state = await running.scalar("SELECT state FROM updates WHERE update_id = ?", (update_id,))
        assert state == "new"
        assert telegram.confirmed_offset <= update_id
    await telegram.wait_confirmed(update_id)
    await running.wait_scalar("SELECT state FROM updates WHERE update_id = ?", "done", (update_id,))


async def test_a_slow_handler_does_not_hold_polling_back(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    gate = Gate()
    bridge.bridge.dispatcher.chat_member.outer_middleware(gate)
    url = await bridge.mint("00000000-0000-4000-8000-000000009102", fbc="fb.1.1.s")
    update_id = telegram.join(CHANNEL_ID, 9100002, url)
    assert update_id is not None
    try:
        # The head start is capped (10 ms by default): the batch is confirmed while
        # its handler still runs (it went the usual way, stored first).
        await telegram.wait_confirmed(update_id)
        assert not gate.opened.is_set()
    finally:
        gate.opened.set()
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 9100002


def _join(user_id: int) -> JoinSeen:
    chat = ChatRef(CHANNEL_ID, CHANNEL_TITLE, None, "channel")
    return JoinSeen(chat, user_id, None, int(time.time()), update_id=None)


def _row(key: str) -> outbox.NewRow:
    return outbox.NewRow(
        kind="conversion",
        path="/events/conversion",
        body={
            "telegramUserId": 9100100,
            "channelId": str(CHANNEL_ID),
            "eventType": str(EventType("Lead")),
            "eventTime": int(time.time()) * 1000,
        },
        idempotency_key=key,
        telegram_user_id=9100100,
        chat_id=CHANNEL_ID,
        event_type="Lead",
    )


async def test_the_join_commit_claims_its_conversion_and_sends_it(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    # Organic joins are reported here, so a join without a link queues a conversion.
    running = await start_bridge(send_organic="true")
    bridge = running.bridge
    batch = await write(bridge.db, lambda tx: bridge.joins.persist(tx, [_join(9100003)]))
    (claimed,) = batch.claimed
    assert claimed.telegram_user_id == 9100003
    assert claimed.attempts == 1
    assert await running.scalar("SELECT state FROM outbox WHERE id = ?", (claimed.id,)) == (
        "sending"
    )
    bridge.joins.after_commit(batch)
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 9100003
    await running.wait_scalar("SELECT state FROM outbox WHERE id = ?", "delivered", (claimed.id,))
    # Claimed once, at the commit: the courier did not claim it a second time.
    assert await running.scalar("SELECT attempts FROM outbox WHERE id = ?", (claimed.id,)) == 1


async def test_the_commit_claims_no_more_than_the_courier_has_room_for(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    running = await start_bridge(courier_concurrency=2)
    bridge = running.bridge

    async with bridge.db.transaction() as tx:
        await outbox.enqueue_many(tx, [_row(f"room-{i}") for i in range(3)])
        claimed = await bridge.courier.claim_in(tx)
    assert len(claimed) == 2
    bridge.courier.send_claimed(claimed)
    # The third waits for a free slot and goes out all the same.
    await adtarget.wait_for_conversions(3)
    await running.wait_scalar("SELECT count(*) FROM outbox WHERE state = 'delivered'", 3)


async def test_a_paused_courier_claims_nothing_at_the_commit(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    courier = bridge.bridge.courier
    await courier.pause_manually("a test")

    async with bridge.bridge.db.transaction() as tx:
        await outbox.enqueue_many(tx, [_row("paused-1")])
        assert await courier.claim_in(tx) == []
    courier.send_claimed([])
    await asyncio.sleep(0.3)
    assert adtarget.conversions == []
    assert await bridge.scalar("SELECT state FROM outbox") == "pending"
    await courier.resume_manually("a test")
    await adtarget.wait_for_conversions(1)


async def test_a_stopped_courier_claims_nothing_at_the_commit(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    # COURIER_ENABLED=false: joins are recorded and their conversions stay queued.
    running = await start_bridge(courier_enabled="false", send_organic="true")
    bridge = running.bridge
    batch = await write(bridge.db, lambda tx: bridge.joins.persist(tx, [_join(9100004)]))
    assert batch.claimed == []
    bridge.joins.after_commit(batch)
    await asyncio.sleep(0.3)
    assert adtarget.conversions == []
    assert await running.scalar("SELECT state FROM outbox") == "pending"


async def test_a_lone_join_is_stored_and_handled_in_one_commit(
    bridge: RunningBridge, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # The bridge idle first (the channel's onboarding written): the one-commit path
    # is for a join that finds nothing else being handled.
    await bridge.wait_scalar("SELECT count(*) FROM updates WHERE state != 'done'", 0)
    url = await bridge.mint("00000000-0000-4000-8000-000000009105", fbc="fb.1.1.o")
    update_id = telegram.join(CHANNEL_ID, 9100005, url)
    assert update_id is not None
    await adtarget.wait_for_conversions(1)
    await telegram.wait_confirmed(update_id)
    # Stored already done: received and handled at the same instant, one commit.
    row = await bridge.scalar(
        "SELECT state || ' ' || CASE WHEN received_at = done_at THEN 1 ELSE 0 END"
        " FROM updates WHERE update_id = ?",
        (update_id,),
    )
    assert row == "done 1"
    assert await bridge.scalar("SELECT count(*) FROM joins WHERE update_id = ?", (update_id,)) == 1


@pytest.mark.one_engine  # the fault is a SQLite TEMP TRIGGER on the bridge's connection
async def test_a_batch_that_cannot_be_written_at_once_is_stored_first(
    bridge: RunningBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A fault in SQLite itself, on the bridge's own connection: storing an update
    # already done fails, storing it new (the usual way) does not.
    await write(
        bridge.bridge.db,
        lambda tx: tx.execute(
            "CREATE TEMP TRIGGER no_done_inserts BEFORE INSERT ON updates"
            " WHEN NEW.state = 'done' BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        ),
    )
    url = await bridge.mint("00000000-0000-4000-8000-000000009106", fbc="fb.1.1.w")
    update_id = telegram.join(CHANNEL_ID, 9100006, url)
    assert update_id is not None
    (conversion,) = await adtarget.wait_for_conversions(1)
    assert conversion["telegramUserId"] == 9100006
    await bridge.wait_scalar("SELECT state FROM updates WHERE update_id = ?", "done", (update_id,))
    assert any("storing them first" in r.getMessage() for r in caplog.records)
    assert await bridge.scalar("SELECT count(*) FROM joins WHERE update_id = ?", (update_id,)) == 1


async def test_on_sent_is_told_before_the_answer_comes(adtarget: FakeAdTarget) -> None:
    adtarget.process_then_delay(1.0)
    client = AdTargetClient(adtarget.url, SecretStr(adtarget.API_KEY), timeout=5.0)
    sent = asyncio.Event()
    try:
        post = asyncio.create_task(
            client.post(
                "/events/conversion",
                _row("on-sent").body,
                idempotency_key="on-sent",
                on_sent=sent.set,
            )
        )
        await asyncio.wait_for(sent.wait(), 5)
        # Written out; AdTarget holds its answer for a second yet.
        assert not post.done()
        answer = await post
        assert answer.status == 200
    finally:
        await client.aclose()


async def test_a_send_waiting_for_the_pacer_does_not_hold_polling_back(
    start_bridge: StartBridge,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
) -> None:
    running = await start_bridge(poll_head_start=1, send_organic="true")
    # As after a 429 with Retry-After: 60, nothing goes out for a minute.
    running.bridge.adtarget.pacer.hold(60)
    update_id = telegram.join(CHANNEL_ID, 9100008, None)
    assert update_id is not None
    await running.wait_scalar("SELECT state FROM outbox", "sending")
    # Claimed and started, but waiting for the pacer, not for the CPU: polling goes on.
    await asyncio.wait_for(running.bridge.courier.sends_written(), 0.5)
    await telegram.wait_confirmed(update_id)
    assert adtarget.conversions == []
