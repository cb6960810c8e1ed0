"""Exponential backoff: how long to wait before trying again after a failure.

Every retry in the bridge (Telegram calls, updates, join approvals, stay checks,
AdTarget deliveries) waits by this one rule, each with its own `Backoff`:
`base` after the first failure, then `factor` times as long after each further
one, never longer than `cap`. With `jitter`, the wait is drawn at random from the
top `jitter` share of that, so many retries that failed together do not all
come back together.

Stateless: the failures are counted where they are kept (an outbox row's
attempts, a Telegram caller's run of errors), and passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float  # the wait after the first failure (before jitter)
    cap: float  # no wait is longer
    factor: float = 2.0  # each further failure multiplies the wait by this
    # The share of each wait drawn at random: 0 waits exactly; 0.5 anywhere in
    # the upper half, [wait / 2, wait]; 1 anywhere in [0, wait].
    jitter: float = 0.0

    def __post_init__(self) -> None:
        # A cap below base is allowed (every wait is then the cap): settings
        # only ask each to be positive.
        if self.base < 0 or self.cap < 0:
            raise ValueError(f"backoff base and cap cannot be negative: {self.base}, {self.cap}")
        if self.factor < 1:
            raise ValueError(f"a backoff factor below 1 would shrink the waits: {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter is a share between 0 and 1: {self.jitter}")

    def ceiling(self, failures: int) -> float:
        """The wait after `failures` failures in a row (counting the last one),
        before jitter: base, base * factor, base * factor², ... up to cap.
        0 failures count as 1."""
        try:
            grown = self.base * self.factor ** max(failures - 1, 0)
        except OverflowError:  # thousands of failures: long past the cap
            return self.cap
        return min(self.cap, grown)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after `failures` failures in a row, jitter drawn from `rng`
        (the module's generator by default)."""
        ceiling = self.ceiling(failures)
        if not self.jitter:
            return ceiling
        low = ceiling * (1 - self.jitter)
        return low + (rng or random).random() * (ceiling - low)
