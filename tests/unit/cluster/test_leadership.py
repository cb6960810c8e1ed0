"""The leader election (bot/cluster/leadership.py) on a real PostgreSQL server: one
leader at a time, a standby taking over when the leader closes, dies or stalls, and
a stalled leader that wakes knowing it lost before it acts.

Waits use the issue's bounds as deadlines (10 s after a kill, 15 s after a stall),
never as measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from bot.cluster.leadership import Leadership, find_leader, lock_key
from tests.harness import ROOT, eventually

KILL_TAKEOVER = 10.0  # s: issue 20's bound after the leader's death
STALL_TAKEOVER = 15.0  # s: and after a stall (SIGSTOP)


class Recorder:
    """A Leadership's callbacks as (monotonic time, event, detail) rows."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    def kinds(self) -> list[str]:
        return [event for _, event, _ in self.events]

    def first(self, kind: str) -> float:
        return next(t for t, event, _ in self.events if event == kind)

    def callbacks(self) -> dict[str, Callable[..., None]]:
        def add(event: str, detail: str = "") -> None:
            self.events.append((time.monotonic(), event, detail))

        return {
            "on_elected": lambda: add("elected"),
            "on_deposed": lambda reason: add("deposed", reason),
        }


@asynccontextmanager
async def running(url: str, identity: str, **options: Any) -> AsyncIterator[Leadership]:
    leadership = Leadership(url, identity=identity, **options)
    leadership.start()
    try:
        yield leadership
    finally:
        await leadership.aclose()


class LeaderProcess:
    """tests/unit/cluster/leader_process.py as a child process, its lines collected."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, identity: str) -> LeaderProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.unit.cluster.leader_process",
            url,
            "--identity",
            identity,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(json.loads(line))

    def kinds(self) -> list[str]:
        return [event["event"] for event in self.events]

    def signal(self, number: signal.Signals) -> None:
        os.kill(self.process.pid, number)

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # gone already: SIGKILLed and reaped
            self.signal(signal.SIGCONT)  # a stopped process would not be reaped
            self.process.kill()
        await self.process.wait()
        await self._reader


@pytest.fixture
async def leader_process(postgres_url: str) -> AsyncIterator[LeaderProcess]:
    child = await LeaderProcess.start(postgres_url, "leader-process")
    try:
        await eventually(lambda: "elected" in child.kinds(), timeout=30, what="the child elected")
        yield child
    finally:
        await child.stop()


def test_the_lock_key_is_fixed_and_names_its_election() -> None:
    assert lock_key() == lock_key("joinbridge-leader")
    assert -(2**63) <= lock_key() < 2**63
    assert lock_key("joinbridge-leader") != lock_key("another-bridge")


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="lease"):
        Leadership("postgresql://nowhere", lease=0.05)
    with pytest.raises(ValueError, match="retry_every"):
        Leadership("postgresql://nowhere", retry_every=0)


async def test_one_of_two_wins_and_closing_it_lets_the_other_win(postgres_url: str) -> None:
    first, second = Recorder(), Recorder()
    async with running(postgres_url, "first", **first.callbacks()) as one:
        await asyncio.wait_for(one.leading.wait(), timeout=30)
        async with running(postgres_url, "second", **second.callbacks()) as two:
            await eventually(lambda: two.leader is not None, what="the standby reading the leader")
            assert (one.role, two.role) == ("leader", "standby")
            assert two.leader is not None
            assert two.leader.identity == "first"
            assert two.leader.since is not None
            status = one.status()
            assert (status.role, status.identity, status.elections) == ("leader", "first", 1)
            assert status.leader_since is not None
            assert (await find_leader(postgres_url)) == two.leader

            await one.aclose()
            assert not one.is_leader
            assert one.role == "standby"
            assert first.kinds() == ["elected", "deposed"]
            await asyncio.wait_for(two.leading.wait(), timeout=5)
            assert two.is_leader
            assert two.elections == 1
            found = await find_leader(postgres_url)
            assert found is not None
            assert found.identity == "second"
    assert second.kinds() == ["elected", "deposed"]
    assert await find_leader(postgres_url) is None  # closing ended the session


async def test_the_standby_never_claims_while_the_leader_is_healthy(postgres_url: str) -> None:
    # A short lease and an eager standby: the heartbeats' cadence is what keeps it out.
    lease = 2.0
    leader, standby = Recorder(), Recorder()
    beats: list[float] = []
    options: dict[str, Any] = {"lease": lease, "retry_every": 0.1}
    async with running(
        postgres_url,
        "leader",
        on_heartbeat=lambda: beats.append(0),
        **options,
        **leader.callbacks(),
    ) as one:
        await asyncio.wait_for(one.leading.wait(), timeout=30)
        async with running(postgres_url, "standby", **options, **standby.callbacks()) as two:
            for _ in range(3 * 10):  # three leases, looking ten times in each
                await asyncio.sleep(lease / 10)
                assert one.is_leader
                assert not two.is_leader
            assert two.leader is not None
            assert two.leader.identity == "leader"
    assert leader.kinds() == ["elected", "deposed"]  # deposed only by its aclose()
    assert standby.kinds() == []
    assert beats  # it held the lease by heartbeats, not by a lease never tested


async def test_a_stall_seen_on_the_clock_deposes_at_once(postgres_url: str) -> None:
    # The process's clock jumps a lease ahead, as after SIGSTOP: is_leader is false
    # before the heartbeat loop has run, and the loop then deposes, ends the session
    # and stands again (and, alone, wins again).
    skew = [0.0]
    recorder = Recorder()
    async with running(
        postgres_url,
        "sleeper",
        lease=3.0,
        clock=lambda: time.monotonic() + skew[0],
        **recorder.callbacks(),
    ) as leadership:
        await asyncio.wait_for(leadership.leading.wait(), timeout=30)
        skew[0] = 3.0
        assert not leadership.is_leader
        assert leadership.role == "standby"
        await eventually(lambda: leadership.elections == 2, what="deposed and elected again")
        assert recorder.kinds()[:3] == ["elected", "deposed", "elected"]
        assert "lease ran out" in recorder.events[1][2]


async def test_a_session_ended_by_the_server_deposes_and_stands_again(postgres_url: str) -> None:
    recorder = Recorder()
    async with (
        running(postgres_url, "victim", lease=1.5, **recorder.callbacks()) as leadership,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
    ):
        await asyncio.wait_for(leadership.leading.wait(), timeout=30)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            ("victim",),
        )
        await eventually(lambda: leadership.elections == 2, what="deposed and elected again")
        assert recorder.kinds()[:3] == ["elected", "deposed", "elected"]
        assert "heartbeat failed" in recorder.events[1][2]


async def test_the_open_transaction_holds_back_no_vacuum(postgres_url: str) -> None:
    beats: list[float] = []
    async with (
        running(postgres_url, "holder", lease=3.0, on_heartbeat=lambda: beats.append(0)) as one,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as other,
    ):
        await asyncio.wait_for(one.leading.wait(), timeout=30)
        await other.execute("CREATE TABLE t (x int)")
        await other.execute("INSERT INTO t VALUES (1)")
        row = await (await other.execute("SELECT txid_current()")).fetchone()
        assert row is not None
        written: int = row[0]
        seen = len(beats)
        await eventually(lambda: len(beats) > seen, what="a heartbeat after the write")
        row = await (
            await other.execute(
                "SELECT state, backend_xid, backend_xmin::text::bigint"
                " FROM pg_stat_activity WHERE application_name = 'holder'"
            )
        ).fetchone()
        assert row is not None
        state, xid, xmin = row
        assert state == "idle in transaction"
        assert xid is None  # it never writes: no transaction id of its own
        assert xmin is None or xmin > written  # its horizon moves on at each heartbeat


async def test_a_killed_leader_is_replaced_within_10_s(
    postgres_url: str, leader_process: LeaderProcess
) -> None:
    standby = Recorder()
    async with running(postgres_url, "standby", **standby.callbacks()) as leadership:
        await eventually(lambda: leadership.leader is not None, what="the standby reading")
        assert leadership.leader is not None
        assert leadership.leader.identity == "leader-process"
        assert not leadership.is_leader

        leader_process.signal(signal.SIGKILL)
        await asyncio.wait_for(leadership.leading.wait(), timeout=KILL_TAKEOVER)
        assert leadership.is_leader
        await leader_process.process.wait()
    assert standby.kinds() == ["elected", "deposed"]


async def test_a_stalled_leader_is_replaced_and_wakes_deposed(
    postgres_url: str, leader_process: LeaderProcess
) -> None:
    standby = Recorder()
    async with running(postgres_url, "standby", **standby.callbacks()) as leadership:
        await eventually(lambda: leadership.leader is not None, what="the standby reading")
        leader_process.signal(signal.SIGSTOP)
        await asyncio.wait_for(leadership.leading.wait(), timeout=STALL_TAKEOVER)
        elected = standby.first("elected")

        woke = time.monotonic()  # it is still stopped: anything stamped later came after
        leader_process.signal(signal.SIGCONT)
        await eventually(
            lambda: "deposed" in [e["event"] for e in leader_process.events if e["t"] > woke],
            what="the old leader reporting itself deposed",
        )
        assert leadership.is_leader  # the new leader is untouched by the old one waking

    old = leader_process.events
    after_wake = [e for e in old if e["t"] > woke]
    # Its first word on waking is "deposed": no poll, no heartbeat before it.
    assert after_wake, old[-5:]
    assert after_wake[0]["event"] == "deposed", after_wake[:5]
    deposed = after_wake[0]
    # Its last lease ran out, on its own clock, before the new leader was elected:
    # the two never both held a lease.
    assert deposed["lease_ends"] <= elected, (deposed, elected)
    assert all(e["t"] < elected for e in old if e["event"] in ("poll", "heartbeat", "elected"))
