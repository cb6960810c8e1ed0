"""A client-side token bucket, so a burst of joins queues instead of drawing 429s."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.capacity = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._hold_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def hold(self, seconds: float) -> None:
        """The server said wait (429 Retry-After): nobody sends before then, and the
        bucket restarts empty so the resumed rate does not burst straight back."""
        now = time.monotonic()
        self._hold_until = max(self._hold_until, now + seconds)
        self._tokens = 0.0
        self._updated = self._hold_until

    def ready(self) -> bool:
        """Whether `acquire` would return at once."""
        now = time.monotonic()
        if now < self._hold_until or self._lock.locked():
            return False
        return min(self.capacity, self._tokens + (now - self._updated) * self.rate) >= 1.0

    async def acquire(self) -> None:
        # The lock makes waiters take tokens in arrival order.
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._hold_until:
                    await asyncio.sleep(self._hold_until - now)
                    continue
                self._refill(now)
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
