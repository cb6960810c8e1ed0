"""How long a standby takes to lead after the leader is SIGKILLed or SIGSTOPped
(bot/cluster/leadership.py, default lease 6 s and retry every 1 s).

A throwaway PostgreSQL server (tests/postgres.py); the leader is the child process
of the tests (tests/unit/cluster/leader_process.py), the standby a Leadership in
this process. Each figure runs from the signal to the standby's on_elected.
This is the election alone: the wired bridge adds its first getUpdates after it.

python -m bench.leader_failover [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable

from bot.cluster.leadership import Leadership
from tests.postgres import PostgresServer

CHILD = "tests.unit.cluster.leader_process"  # the tests' leader, as a module to run


async def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def one_failover(url: str, how: signal.Signals) -> float:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", CHILD, url, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        while b'"elected"' not in await child.stdout.readline():
            pass
        elected = asyncio.Event()
        standby = Leadership(url, identity="bench-standby", on_elected=elected.set)
        async with standby:
            await _until(lambda: standby.leader is not None, "the standby seeing the leader")
            # At any point of the leader's heartbeat cycle and the standby's retry cycle.
            await asyncio.sleep(random.uniform(0, standby.lease / 3))
            os.kill(child.pid, how)
            signalled = time.monotonic()
            await asyncio.wait_for(elected.wait(), timeout=60)
            return time.monotonic() - signalled
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone (SIGKILL)
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        await child.wait()


async def main(runs: int) -> None:
    with PostgresServer.start() as server:
        for how in (signal.SIGKILL, signal.SIGSTOP):
            times = []
            for _ in range(runs):
                url = server.create_database()
                times.append(await one_failover(url, how))
                server.drop_database(url)
            print(
                f"{how.name}: standby elected after median {statistics.median(times):.2f} s"
                f" (min {min(times):.2f}, max {max(times):.2f}, {runs} runs)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
