"""A bridge process's part in the election, alone, for the failover tests.

Runs a `Leadership` and prints one JSON line per event, each with `t`, the
monotonic clock (system-wide on Linux, so comparable with the test's own):
"ready"; "elected"; "heartbeat" (each answered heartbeat, with `lease_ends`);
"deposed" (with the reason and `lease_ends`, when its last lease ran out
locally); and "poll", each time a poller would call getUpdates, having consulted
`is_leader` right before, as the real poller does.

python -m tests.unit.cluster.leader_process URL [--lease S] [--identity NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bot.cluster.leadership import DEFAULT_LEASE, Leadership

POLL_EVERY = 0.05  # seconds between the stand-in poller's looks at is_leader


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"t": time.monotonic(), "event": event, **fields}), flush=True)


async def main(url: str, lease: float, identity: str) -> None:
    seen: dict[str, float | None] = {"lease_ends": None}

    def renewed(event: str) -> None:
        seen["lease_ends"] = leadership.lease_ends
        say(event, lease_ends=seen["lease_ends"])

    leadership = Leadership(
        url,
        lease=lease,
        identity=identity,
        on_elected=lambda: renewed("elected"),
        on_heartbeat=lambda: renewed("heartbeat"),
        on_deposed=lambda reason: say("deposed", reason=reason, lease_ends=seen["lease_ends"]),
    )
    async with leadership:
        say("ready")
        while True:
            if leadership.is_leader:
                say("poll")
            await asyncio.sleep(POLL_EVERY)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE)
    parser.add_argument("--identity", default="leader-process")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.lease, args.identity))
