"""Shared bench helpers: medians, a figures table, a bridge on the loopback fakes."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def count_rows(db_path: Path, sql: str) -> int:
    """Read through a separate connection, so measuring does not contend for the
    bridge's own connection lock."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
        return int(conn.execute(sql).fetchone()[0])


async def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.005) -> float:
    """Wait until `check()` holds; return the monotonic time it was first seen."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(interval)
    return time.monotonic()
