"""What the app asks of an election, and the one for a bridge alone on SQLite.

`bot.app` runs the leader's jobs (polling, the courier, the invite pools and the
other Telegram-facing loops) while `leading` is set and stops them when
`standing_by` is, and the poller asks `is_leader` before each getUpdates. With
DATABASE_URL that is `leadership.Leadership`; on the SQLite file there is one
process (its instance lock sees to it), so it leads from start to stop.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from bot.cluster.leadership import LeadershipStatus, Role


class Election(Protocol):
    leading: asyncio.Event  # set while this process leads
    standing_by: asyncio.Event  # set while it does not

    @property
    def is_leader(self) -> bool: ...

    @property
    def role(self) -> Role: ...

    def status(self) -> LeadershipStatus: ...

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


class SoleLeader:
    """The only process on its database: the leader, always."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.leading = asyncio.Event()
        self.leading.set()
        self.standing_by = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def role(self) -> Role:
        return "leader"

    def status(self) -> LeadershipStatus:
        return LeadershipStatus(
            role="leader", identity=self.identity, leader_since=None, elections=1, leader=None
        )

    def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
