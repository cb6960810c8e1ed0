"""The one token bucket: burst, refill, the wait it names, holds, and waiting in line."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given
from hypothesis import strategies as st

from bot.token_bucket import TokenBucket


def test_a_new_bucket_lets_a_burst_through_then_names_the_wait() -> None:
    bucket = TokenBucket(rate_per_second=2, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == 0.5  # one token comes every half second


def test_a_refused_take_spends_nothing() -> None:
    bucket = TokenBucket(rate_per_second=1, burst=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.25) == 0.75
    assert bucket.take(0.5) == 0.5
    assert bucket.take(1.0) == 0.0
    assert bucket.take(1.0) == 1.0


def test_an_idle_bucket_fills_up_to_its_burst_and_no_further() -> None:
    bucket = TokenBucket(rate_per_second=10, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    taken = [bucket.take(3600.0) for _ in range(3)]
    assert taken[:2] == [0.0, 0.0]
    assert taken[2] > 0


def test_the_pacer_says_whether_a_token_is_there_now() -> None:
    bucket = TokenBucket(rate_per_second=0.1, burst=1)
    assert bucket.ready()
    bucket.hold(30)
    assert not bucket.ready()


def test_a_hold_stops_every_take_then_restarts_the_bucket_empty() -> None:
    bucket = TokenBucket(rate_per_second=1, burst=5, now=0.0)
    bucket.hold(30, now=0.0)
    assert not bucket.ready(10.0)
    assert bucket.take(10.0) == 20.0
    # Over: no burst straight back, one token a second from the end of the hold.
    assert not bucket.ready(30.0)
    assert bucket.take(30.5) == 0.5
    assert bucket.ready(31.0)
    assert bucket.take(31.0) == 0.0
    assert bucket.take(31.0) == 1.0


def test_a_shorter_hold_does_not_cut_a_longer_one() -> None:
    bucket = TokenBucket(rate_per_second=1, burst=1, now=0.0)
    bucket.hold(60, now=0.0)
    bucket.hold(5, now=1.0)
    assert bucket.take(10.0) == 50.0


@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=100),
    steps=st.lists(st.floats(min_value=0, max_value=10), max_size=200),
)
def test_never_more_than_the_burst_plus_the_refill_and_each_named_wait_is_right(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    allowed = 0
    for step in steps:
        now += step
        wait = bucket.take(now)
        if wait:
            assert wait > 0
            if wait > 1e-6:  # far enough from rounding: nothing comes sooner than named
                assert bucket.take(now + wait / 2) > 0
            # It comes when named (a nanosecond over, for the rounding of `now`).
            now += wait + 1e-9
            assert bucket.take(now) == 0
        allowed += 1
    assert allowed <= burst + rate * now + 1e-6


async def test_waiters_take_tokens_in_arrival_order_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_second=50, burst=1)
    order: list[int] = []

    async def one(n: int) -> None:
        await bucket.acquire()
        order.append(n)

    started = time.monotonic()
    tasks = [asyncio.create_task(one(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert not bucket.ready()  # there is a line
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    # The first at once, then one every 20 ms.
    assert time.monotonic() - started >= 4 / 50 * 0.9


async def test_acquire_waits_out_a_hold() -> None:
    bucket = TokenBucket(rate_per_second=1000, burst=1)
    bucket.hold(0.1)
    started = time.monotonic()
    await bucket.acquire()
    assert time.monotonic() - started >= 0.1
