"""A token bucket: `burst` tokens, refilled at `rate` a second, one spent per request.

One arithmetic for every rate limit in the bridge: the courier's pacing towards
AdTarget's limit and the stay checks' towards Telegram's (waiting in line with
`acquire`), and the tracker's per-client limit (answering at once with `take`,
one bucket per client in `tracker.clients.ClientRateLimiter`).
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    # Slots: the tracker keeps one bucket per client, up to tens of thousands.
    __slots__ = ("_lock", "_tokens", "_updated", "capacity", "rate")

    def __init__(self, rate_per_second: float, burst: float, now: float | None = None) -> None:
        """Full at the start. `now`, like every time here, is time.monotonic()
        (read when not given)."""
        self.rate = rate_per_second
        self.capacity = float(burst)
        self._tokens = self.capacity
        # When `_tokens` was counted. Ahead of the clock while held: the bucket
        # stays empty until then.
        self._updated = time.monotonic() if now is None else now
        # Made on the first `acquire`: the tracker's buckets never wait in line.
        self._lock: asyncio.Lock | None = None

    def take(self, now: float | None = None) -> float:
        """Spend a token if there is one: 0.0. Else nothing is spent, and the
        answer is the seconds until there would be one."""
        if now is None:
            now = time.monotonic()
        if now < self._updated:  # held
            return self._updated - now
        tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate

    def hold(self, seconds: float, now: float | None = None) -> None:
        """The server said wait (429 Retry-After): nobody sends before then, and the
        bucket restarts empty so the resumed rate does not burst straight back."""
        if now is None:
            now = time.monotonic()
        self._updated = max(self._updated, now + seconds)
        self._tokens = 0.0

    def ready(self, now: float | None = None) -> bool:
        """Whether `acquire` would return at once."""
        if self._lock is not None and self._lock.locked():
            return False
        if now is None:
            now = time.monotonic()
        if now < self._updated:  # held
            return False
        return min(self.capacity, self._tokens + (now - self._updated) * self.rate) >= 1.0

    async def acquire(self) -> None:
        """Wait for a token and spend it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        # The lock makes waiters take tokens in arrival order.
        async with self._lock:
            while True:
                wait = self.take()
                if not wait:
                    return
                await asyncio.sleep(wait)
