"""PostgreSQL figures (issue 20): the tracker on SQLite, on PostgreSQL with one
process and with two behind a small load balancer; ingest on PostgreSQL; and the
failover from a SIGKILLed leader to the new leader's first getUpdates.

A throwaway server (tests/postgres.py), a fresh database per measurement. The
bridges are `python -m bot` processes (ingest: in this process, as
bench/ingest.py), the fakes, the load generator and the balancer share this one.

    python -m bench.pg [--runs 2] [--seconds 4] [--failovers 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import ingest as ingest_bench
from bench import tracker as tracker_bench
from bench.common import free_port, summary
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import CHANNEL_ID, CHANNEL_TITLE, BridgeProcess, bridge_env, eventually
from tests.postgres import PostgresError, PostgresServer, PostgresUnavailable

# As bench/flows.py's stage: one load generator stands for thousands of visitors.
UNLIMITED_TRACKER: dict[str, Any] = {
    "tracker_rate_per_minute": 10_000_000,
    "tracker_burst": 100_000,
    "tracker_visits_per_hour": 10_000_000,
}


class RoundRobin:
    """A TCP balancer: each connection goes to the next backend in turn, its bytes
    copied both ways. Enough to spread a load generator's connections evenly; it
    costs a hop and some of this process's CPU, like any proxy on the same host."""

    def __init__(self, backends: list[int]) -> None:
        self._next = itertools.cycle(backends)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", next(self._next))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@dataclass
class Cluster:
    telegram: FakeTelegram
    adtarget: FakeAdTarget
    processes: list[BridgeProcess]
    ports: list[int]
    tracker: str  # where the load goes: the one process, or the balancer

    def env(self, n: int) -> dict[str, str]:
        return self.processes[n].env


async def healthz(port: int) -> dict[str, Any] | None:
    """The details /healthz gives a local client, or None while it does not answer 200."""
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=2) as http:
            response = await http.get(f"http://127.0.0.1:{port}/healthz")
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
    return None


def pool_size(url: str | None, db_path: Path) -> int:
    if url is None:
        from bench.common import pool_size as sqlite_pool_size

        return sqlite_pool_size(db_path)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM invite_links WHERE visit_id IS NULL AND discarded_at IS NULL"
        ).fetchone()
    return 0 if row is None else int(row[0])


@contextlib.asynccontextmanager
async def cluster(
    url: str | None, processes: int, pool: int = 0, balanced: bool = False, **settings: Any
) -> AsyncIterator[Cluster]:
    """`processes` bridges on the database `url` (None: one on SQLite), the channel
    tracked and its pool full, every tracker healthy."""
    with tempfile.TemporaryDirectory() as tmp:
        telegram, adtarget = FakeTelegram(), FakeAdTarget(rate_per_minute=6_000_000, burst=100_000)
        await telegram.start()
        await adtarget.start()
        telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
        ports = [free_port() for _ in range(processes)]
        extra = {} if url is None else {"database_url": url}
        bridges = [
            BridgeProcess(
                bridge_env(
                    Path(tmp),
                    telegram,
                    adtarget,
                    log_level="WARNING",
                    tracker_port=port,
                    invite_pool_size=pool,
                    invite_mint_interval=0,
                    **UNLIMITED_TRACKER,
                    **extra,
                    **settings,
                ),
                Path(tmp) / f"process-{n}.log",
            )
            for n, port in enumerate(ports)
        ]
        balancer = RoundRobin(ports) if balanced else None
        try:
            for bridge in bridges:
                await bridge.start()
            await telegram.wait_for_call("getUpdates", timeout=120)
            telegram.bot_status_change(CHANNEL_ID, "administrator")
            db_path = Path(tmp) / "bridge.db"
            await eventually(
                lambda: pool_size(url, db_path) >= pool, timeout=600, interval=0.1, what="pool"
            )
            for port in ports:
                await eventually(lambda port=port: healthz(port), timeout=120, what="healthy")
            if balancer is not None:
                await balancer.start()
            tracker = f"http://127.0.0.1:{balancer.port if balancer else ports[0]}"
            yield Cluster(telegram, adtarget, bridges, ports, tracker)
        finally:
            if balancer is not None:
                await balancer.stop()
            for bridge in bridges:
                if bridge.proc is not None and bridge.proc.returncode is None:
                    bridge.terminate()
            for bridge in bridges:
                with contextlib.suppress(TimeoutError):
                    await bridge.wait(20)
                await bridge.ensure_dead()
            await telegram.stop()
            await adtarget.stop()


async def tracker_figures(
    server: PostgresServer, *, processes: int, engine: str, seconds: float
) -> dict[str, tuple[float, float]]:
    """bench/tracker.py's run (visits at 500/s, then invites at 200/s, open loop)
    against this cluster."""
    url = None if engine == "sqlite" else server.create_database()

    def staging(pool: int) -> contextlib.AbstractAsyncContextManager[Cluster]:
        return cluster(url, processes, pool=pool, balanced=processes > 1)

    try:
        return await tracker_bench.one_run(seconds, staging, throughput=True)
    finally:
        if url is not None:
            server.drop_database(url)


async def one_failover(cl: Cluster, leader: int) -> float:
    """SIGKILL the leader at a random point of its lease; seconds until the first
    getUpdates that reaches Telegram after it (only the new leader can send one)."""
    lease = float(cl.env(leader).get("LEADER_LEASE", "6"))
    await asyncio.sleep(random.uniform(0, lease / 3))
    cl.processes[leader].kill()
    killed = time.monotonic()
    await cl.processes[leader].wait(10)
    call = await cl.telegram.wait_for_call("getUpdates", lambda c: c.at > killed, timeout=60)
    return call.at - killed


async def role(port: int) -> str | None:
    health = await healthz(port)
    return None if health is None else str(health["cluster"]["role"])


async def failover_figures(server: PostgresServer, kills: int) -> list[float]:
    """Two processes; the leader is killed, then started again as the standby of the
    survivor, `kills` times over."""
    url = server.create_database()
    times: list[float] = []
    try:
        async with cluster(url, 2) as cl:
            for _ in range(kills):
                roles = [await role(port) for port in cl.ports]
                leader = roles.index("leader")
                times.append(await one_failover(cl, leader))
                # The killed one comes back and stands by; wait until it sees the leader.
                old = cl.processes[leader]
                cl.processes[leader] = BridgeProcess(
                    old.env, old.log_path.with_suffix(f".{len(times)}.log")
                )
                await cl.processes[leader].start()

                async def standing_by(n: int = leader) -> bool:
                    health = await healthz(cl.ports[n])
                    return bool(health and health["cluster"]["leader"])

                await eventually(standing_by, timeout=120, interval=0.1, what="standby back")
    finally:
        server.drop_database(url)
    return times


async def ingest_figures(server: PostgresServer, joins: int, runs: int) -> list[float]:
    rates = []
    for _ in range(runs):
        url = server.create_database()
        try:
            rates.append(await ingest_bench.one_run(joins, database_url=url))
        finally:
            server.drop_database(url)
    return rates


@dataclass
class PgFigures:
    tracker: dict[str, list[dict[str, tuple[float, float]]]]  # configuration -> runs
    ingest: list[float]
    ingest_joins: int
    failover: list[float]


# Closed-loop clients of the throughput figure (bench/tracker.py).
THROUGHPUT = tracker_bench.THROUGHPUT_CLIENTS

CONFIGURATIONS = {
    "SQLite": ("sqlite", 1),
    "PostgreSQL": ("postgres", 1),
    "PostgreSQL x2 balanced": ("postgres", 2),
}


async def measure(
    server: PostgresServer, *, runs: int, seconds: float, joins: int, kills: int
) -> PgFigures:
    tracker: dict[str, list[dict[str, tuple[float, float]]]] = {}
    # Alternated, one run of each configuration per round: the shared machine's
    # speed drifts over minutes.
    for _ in range(runs):
        for name, (engine, processes) in CONFIGURATIONS.items():
            tracker.setdefault(name, []).append(
                await tracker_figures(server, processes=processes, engine=engine, seconds=seconds)
            )
            print(f"  measured: tracker, {name}", flush=True)
    ingest = await ingest_figures(server, joins, runs)
    print(f"  measured: ingest on PostgreSQL: {statistics.median(ingest):,.0f} joins/s", flush=True)
    failover = await failover_figures(server, kills)
    print(f"  measured: failover: {statistics.median(failover):.2f} s", flush=True)
    return PgFigures(tracker, ingest, joins, failover)


def start_server() -> PostgresServer | str:
    """A throwaway server, or why none could be started."""
    try:
        return PostgresServer.start()
    except (PostgresUnavailable, PostgresError) as error:
        return str(error)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--joins", type=int, default=2000)
    parser.add_argument("--failovers", type=int, default=5)
    args = parser.parse_args()
    server = start_server()
    if isinstance(server, str):
        print(f"PostgreSQL figures skipped: no server could be started ({server})")
        return
    with server:
        figures = await measure(
            server, runs=args.runs, seconds=args.seconds, joins=args.joins, kills=args.failovers
        )
    for name, results in figures.tracker.items():
        most = summary([r["visits/s"][0] for r in results])
        print(
            f"{name}: visits/s, closed loop {most[0]:,.0f} (min {most[1]:,.0f}, max {most[2]:,.0f})"
        )
        for kind, rate in (("visit", 500), ("invite", 200)):
            p99 = summary([r[kind][1] for r in results])
            print(
                f"{name}: {kind} p99 at {rate}/s {p99[0]:.1f} ms"
                f" (min {p99[1]:.1f}, max {p99[2]:.1f})"
            )
    rate = summary(figures.ingest)
    print(f"ingest on PostgreSQL: {rate[0]:,.0f} joins/s (min {rate[1]:,.0f}, max {rate[2]:,.0f})")
    fail = summary(figures.failover)
    print(f"failover to first getUpdates: {fail[0]:.2f} s (min {fail[1]:.2f}, max {fail[2]:.2f})")


if __name__ == "__main__":
    asyncio.run(main())
