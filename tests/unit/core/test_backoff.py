"""The one backoff rule: growth from base by factor, the cap, and the jitter's range."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.backoff import Backoff

bases = st.floats(min_value=0.001, max_value=1000)
caps = st.floats(min_value=0.001, max_value=100_000)
failures = st.integers(min_value=1, max_value=5000)
jitters = st.floats(min_value=0, max_value=1)


def test_the_wait_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(base=1, cap=60)
    assert [backoff.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_no_failure_yet_counts_as_the_first() -> None:
    backoff = Backoff(base=3, cap=60)
    assert backoff.delay(0) == backoff.delay(1) == 3


def test_a_factor_other_than_two() -> None:
    backoff = Backoff(base=1, cap=100, factor=3)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 3, 9, 27, 81]
    assert backoff.delay(6) == 100


def test_a_cap_below_base_makes_every_wait_the_cap() -> None:
    assert Backoff(base=100, cap=60).delay(1) == 60


def test_thousands_of_failures_wait_the_cap_without_overflowing() -> None:
    assert Backoff(base=5, cap=3600).delay(100_000) == 3600
    assert Backoff(base=5, cap=3600, factor=10.5, jitter=0.5).ceiling(2000) == 3600


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"base": -1, "cap": 1}, "cannot be negative"),
        ({"base": 1, "cap": -1}, "cannot be negative"),
        ({"base": 1, "cap": 2, "factor": 0.5}, "would shrink the waits"),
        ({"base": 1, "cap": 2, "jitter": -0.1}, "a share between 0 and 1"),
        ({"base": 1, "cap": 2, "jitter": 1.5}, "a share between 0 and 1"),
    ],
)
def test_a_config_that_makes_no_sense_is_refused(config: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Backoff(**config)


@given(base=bases, cap=caps, n=failures)
def test_without_jitter_the_wait_is_exact(base: float, cap: float, n: int) -> None:
    backoff = Backoff(base=base, cap=cap)
    assert backoff.delay(n) == backoff.ceiling(n) == backoff.delay(n, random.Random(n))


@given(base=bases, cap=caps, n=failures)
def test_the_waits_grow_and_never_pass_the_cap(base: float, cap: float, n: int) -> None:
    backoff = Backoff(base=base, cap=cap)
    assert backoff.ceiling(n) <= backoff.ceiling(n + 1) <= cap
    assert backoff.ceiling(n) >= min(base, cap)


@given(base=bases, cap=caps, n=st.integers(min_value=1, max_value=60))
def test_each_wait_is_base_times_two_to_the_failures_before(
    base: float, cap: float, n: int
) -> None:
    # The rule every retry in the bridge used before it was written once.
    assert Backoff(base=base, cap=cap).delay(n) == min(cap, base * 2 ** (n - 1))


@given(base=bases, cap=caps, n=failures, jitter=jitters, seed=st.integers())
def test_jitter_draws_from_the_top_share_of_the_wait(
    base: float, cap: float, n: int, jitter: float, seed: int
) -> None:
    backoff = Backoff(base=base, cap=cap, jitter=jitter)
    ceiling = backoff.ceiling(n)
    delay = backoff.delay(n, random.Random(seed))
    assert ceiling * (1 - jitter) * (1 - 1e-12) <= delay <= ceiling


@given(base=bases, cap=caps, n=failures, seed=st.integers())
def test_half_jitter_is_the_upper_half_drawn_as_before(
    base: float, cap: float, n: int, seed: int
) -> None:
    # The courier's and the Telegram caller's waits, the same to the last bit
    # for the same draw as when each wrote the formula out.
    backoff = Backoff(base=base, cap=cap, jitter=0.5)
    ceiling = backoff.ceiling(n)
    draw = random.Random(seed).random()
    assert backoff.delay(n, random.Random(seed)) == ceiling / 2 + draw * ceiling / 2


def test_jitter_spreads_the_waits_over_its_whole_range() -> None:
    backoff = Backoff(base=8, cap=60, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(1, rng) for _ in range(500)]
    assert 4 <= min(delays) < 4.2
    assert 7.8 < max(delays) <= 8
    assert len(set(delays)) == len(delays)


def test_full_jitter_reaches_down_to_zero() -> None:
    backoff = Backoff(base=10, cap=60, jitter=1)
    rng = random.Random(3)
    delays = [backoff.delay(1, rng) for _ in range(500)]
    assert 0 <= min(delays) < 0.5
    assert max(delays) <= 10
