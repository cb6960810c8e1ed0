"""Shared bench helpers: medians, a figures table, a bridge on the loopback fakes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


@contextlib.contextmanager
def harness_gc_paused() -> Iterator[None]:
    """No garbage collection in this (the harness's) process while a figure is taken.

    The fakes keep every update and call they saw; a full collection over them
    took ~200 ms here, and a Telegram that stalls that long in the middle of a
    one-second burst is the harness's pause, not the bridge's. What exists now
    is frozen (never scanned again) and collection resumes afterwards."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def pool_size(db_path: Path) -> int:
    """Unassigned pool links; 0 before the database exists or is migrated."""
    if not db_path.exists():
        return 0
    try:
        return count_rows(
            db_path,
            "SELECT count(*) FROM invite_links WHERE visit_id IS NULL AND discarded_at IS NULL",
        )
    except sqlite3.OperationalError:
        return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
