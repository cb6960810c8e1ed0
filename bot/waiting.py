"""Sleeping in the service loops: until a timeout, or sooner when woken or stopped."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, timeout: float | None) -> None:  # noqa: ASYNC109
    """Return when any of `events` is set, or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Outstanding:
    """Keys still pending, and a way to wait until none are."""

    def __init__(self) -> None:
        self._keys: set[int] = set()
        self._none = asyncio.Event()
        self._none.set()

    def add(self, key: int) -> None:
        self._keys.add(key)
        self._none.clear()

    def discard(self, key: int) -> None:
        self._keys.discard(key)
        if not self._keys:
            self._none.set()

    async def none_left(self) -> None:
        await self._none.wait()
