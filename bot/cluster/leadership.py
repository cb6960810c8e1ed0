"""Leader election among bridge processes sharing one PostgreSQL database.

Exactly one process leads (polls Telegram, runs the courier, fills the invite
pools); the others stand by. `Leadership` runs the election on a PostgreSQL
session of its own, never a pooled or shared one: the lock below belongs to that
session, and a session shared with other work could end, block or commit under it.

How a process becomes leader
    Standing by, it tries every `retry_every` seconds (1 s by default):
    `BEGIN; SELECT pg_try_advisory_xact_lock(KEY)`, and `ROLLBACK` when refused.
    When granted, it keeps that transaction open: the lock is held exactly as long
    as the transaction lives. KEY is a fixed 64-bit number derived from the name
    "joinbridge-leader" (`lock_key`). Advisory locks are scoped to the database,
    so bridges on two databases of one server never contend.

Why a transaction-level lock, and why it is safe against a stall
    SIGKILL, a crash or a closed socket end the session, and the server releases
    every lock with it. A stall does not: a SIGSTOPped process keeps its socket,
    and an advisory lock alone would be held for ever. So the session sets
    `idle_in_transaction_session_timeout` to the lease (6 s by default): the
    server ends a session that has sat idle inside a transaction that long, and
    the lock goes with it. The leader heartbeats (`SELECT 1`) every lease / 3,
    which restarts that timer.

    A transaction-level lock makes "holding the lock" and "being in the
    transaction the timeout watches" one fact: the lock cannot outlive the
    transaction, and the transaction cannot sit idle past the lease. A session-level
    lock would survive the end of the transaction (a rollback after an error, a
    stray commit), leaving an idle session outside any transaction, which
    `idle_in_transaction_session_timeout` no longer watches: a stall would then
    hold the lock for ever.

    The open transaction costs the server nothing lasting: `SELECT 1` assigns no
    transaction id, and under READ COMMITTED each statement takes a fresh snapshot,
    so the session holds vacuum's horizon back by one heartbeat interval at most.

Why the old leader never acts beside the new one
    The leader trusts itself for `0.9 × lease` from the moment it SENT its last
    heartbeat that was answered (`is_leader`, on the monotonic clock). The server's
    idle timer for that heartbeat starts only once the server has answered it, so
    the server ends the session no sooner than `sent + lease`, and only after that
    can a standby take the lock. The 10 % margin covers timer slack and the
    difference in clock rates between two machines. A process that wakes from
    SIGSTOP therefore finds `is_leader` false at once, before any of its own code
    runs, and its next heartbeat (answered from a buffer or not) cannot renew a
    lease that has already run out: it reports itself deposed, ends the session,
    reconnects and stands by. A heartbeat that fails, or has no answer by the end
    of the local lease, deposes it the same way.

    A caller that acts as leader (the poller) consults `is_leader` right before
    each action (each getUpdates), and stops what is under way on `on_deposed`:
    a long poll already sent would otherwise run to its end.

A dead host or a broken network
    The server ends the leader's idle-in-transaction session after the lease
    whatever happened to the client. On the client side libpq's TCP keepalives and
    `tcp_user_timeout` (= the lease) make a dead server or path an error on the
    socket, and every statement has a deadline of its own, so nothing waits past
    the lease.

What it shows (/healthz, doctor)
    `role` ("leader" | "standby"), `leader_since`, `elections` (times this process
    was elected), `leader` (who leads, read from `pg_locks` and the holder's
    `application_name`, which is this process's `identity`), all in `status()`;
    `find_leader(url)` reads the same from outside, for doctor.

Not through a connection pooler in transaction mode (PgBouncer's): the lock and
the timeout must live on one server session.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import psycopg
from psycopg import AsyncConnection

from bot.backoff import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")
Role = Literal["leader", "standby"]

DEFAULT_NAME: Final = "joinbridge-leader"
# Seconds: a stalled leader's session ends this long after its last heartbeat.
DEFAULT_LEASE: Final = 6.0
DEFAULT_RETRY_EVERY: Final = 1.0  # seconds between a standby's attempts
HEARTBEATS_PER_LEASE: Final = 3  # a heartbeat lost to a passing delay still leaves two
# The share of the lease a leader trusts itself for after a heartbeat was sent: the
# rest covers timer slack and clock-rate differences between machines.
TRUSTED_SHARE: Final = 0.9
APPLICATION_NAME_MAX: Final = 63  # PostgreSQL keeps NAMEDATALEN - 1 bytes of it

_TAKE = "SELECT pg_try_advisory_xact_lock(%s)"
_HEARTBEAT = "SELECT 1"
_SET_LEASE = "SELECT set_config('idle_in_transaction_session_timeout', %s, false)"
# Who holds the lock: pg_locks splits a bigint key into classid (high 32 bits) and
# objid (low 32 bits), with objsubid 1; the holder's session names itself in
# application_name. xact_start is when its transaction, so its leadership, began.
_HOLDER = """
SELECT a.application_name, a.xact_start
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ((%(key)s::bigint >> 32) & 4294967295)::oid
  AND l.objid = (%(key)s::bigint & 4294967295)::oid
"""

# A failed session: the server gone or refusing, the network, a deadline.
_SESSION_ERRORS = (psycopg.Error, OSError, TimeoutError)


def lock_key(name: str = DEFAULT_NAME) -> int:
    """The advisory lock's key: the first 8 bytes of SHA-256(name), a signed bigint,
    the same in every process and release."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def default_identity() -> str:
    return f"joinbridge {socket.gethostname()} pid {os.getpid()}"


def _application_name(identity: str) -> str:
    # The server would replace non-ASCII with '?' and cut at 63 bytes: do it here, so
    # the name read back from pg_stat_activity equals `identity`.
    return identity.encode("ascii", "replace").decode()[:APPLICATION_NAME_MAX]


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    identity: str  # the leader's application_name
    since: datetime | None  # when it was elected; None where the server hides it from us


@dataclass(frozen=True, slots=True)
class LeadershipStatus:
    role: Role
    identity: str  # this process
    leader_since: datetime | None  # when this process was elected, while it leads
    elections: int
    leader: LeaderInfo | None  # who leads, as last seen (None: nobody, or not read yet)


async def find_leader(url: str, *, name: str = DEFAULT_NAME) -> LeaderInfo | None:
    """Who holds the leader's lock in the database at `url` right now (doctor)."""
    connection = await AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
    async with connection:
        return await _read_holder(connection, lock_key(name))


async def _read_holder(connection: AsyncConnection[tuple[Any, ...]], key: int) -> LeaderInfo | None:
    row = await (await connection.execute(_HOLDER, {"key": key})).fetchone()
    return LeaderInfo(identity=row[0], since=row[1]) if row else None


class Leadership:
    """One process's part in the election; see the module's docstring."""

    def __init__(
        self,
        url: str,
        *,
        lease: float = DEFAULT_LEASE,
        retry_every: float = DEFAULT_RETRY_EVERY,
        name: str = DEFAULT_NAME,
        identity: str | None = None,
        on_elected: Callable[[], None] | None = None,
        on_deposed: Callable[[str], None] | None = None,
        on_heartbeat: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The server's timeout is whole milliseconds, and a lease much shorter than a
        # round trip would depose a healthy leader.
        if lease < 0.1:
            raise ValueError(f"the lease must be at least 0.1 s: {lease}")
        if retry_every <= 0:
            raise ValueError(f"retry_every must be positive: {retry_every}")
        self._url = url
        self.lease = lease
        self.retry_every = retry_every
        self.key = lock_key(name)
        self.identity = _application_name(identity or default_identity())
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._on_heartbeat = on_heartbeat
        self._clock = clock
        self._trusted_for = lease * TRUSTED_SHARE
        self._beat_every = lease / HEARTBEATS_PER_LEASE
        # Reconnecting after a failed session: soon, then no slower than one lease.
        self._reconnect = Backoff(base=retry_every, cap=max(retry_every, lease), jitter=0.5)
        self._connection: AsyncConnection[tuple[Any, ...]] | None = None
        self._valid_until: float | None = None  # on `clock`; None while standing by
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # set by aclose(): every loop ends at its next turn
        self.leader_since: datetime | None = None
        self.elections = 0
        self.leader: LeaderInfo | None = None
        self.leading = asyncio.Event()  # set while this process leads
        self.standing_by = asyncio.Event()  # set while it does not
        self.standing_by.set()

    # -- what callers read ---------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while the lease, renewed by the last answered heartbeat, runs:
        false at once after a stall, before the heartbeat loop has noticed."""
        return self._valid_until is not None and self._clock() < self._valid_until

    @property
    def lease_ends(self) -> float | None:
        """When, on `clock`, this leader's lease runs out unless a heartbeat renews it."""
        return self._valid_until

    @property
    def role(self) -> Role:
        return "leader" if self.is_leader else "standby"

    def status(self) -> LeadershipStatus:
        return LeadershipStatus(
            role=self.role,
            identity=self.identity,
            leader_since=self.leader_since if self.is_leader else None,
            elections=self.elections,
            leader=self.leader,
        )

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Starts standing for election in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="leadership")
            self._task.add_done_callback(self._ended)

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> None:
        # Only a bug ends _run other than by aclose(): the process then stays a
        # standby for good (safe), and this line says why.
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("leadership: stopped standing for election", exc_info=error)

    async def aclose(self) -> None:
        """Stops: a leader is deposed (`on_deposed`) and its session ended, so the
        lock is free for the others at once."""
        task, self._task = self._task, None
        self._closing = True
        if task is not None:
            task.cancel()
            # wait() rather than `await task`: the task's cancellation is not ours.
            await asyncio.wait([task])
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        await self._disconnect()

    async def __aenter__(self) -> Leadership:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                await self._session()
                failures = 0
            except _SESSION_ERRORS as error:
                failures += 1
                wait = self._reconnect.delay(failures)
                log.warning(
                    "leadership: the database session failed (%s); trying again in %.1f s",
                    _describe(error),
                    wait,
                )
                await asyncio.sleep(wait)

    async def _session(self) -> None:
        """One session: stand by until elected, lead until deposed, then end it."""
        self._connection = await self._connect()
        try:
            await self._stand_by(self._connection)
            await self._lead(self._connection)
        finally:
            if self._valid_until is not None:  # cancelled (aclose) or failed while leading
                self._depose("leadership stopped")
            await self._disconnect()

    async def _connect(self) -> AsyncConnection[tuple[Any, ...]]:
        connection = await AsyncConnection.connect(
            self._url,
            autocommit=True,  # transactions are begun and ended by hand, below
            application_name=self.identity,
            connect_timeout=max(2, math.ceil(self.lease)),  # libpq's minimum is 2 s
            # A dead server or path becomes a socket error within about a lease (TCP
            # only; libpq ignores these on a unix socket).
            keepalives=1,
            keepalives_idle=max(1, math.ceil(self._beat_every)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=math.ceil(self.lease * 1000),
        )
        try:
            await self._within(connection.execute(_SET_LEASE, (str(math.ceil(self.lease * 1000)),)))
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()  # ends the session: the server drops its locks

    async def _within(self, step: Awaitable[T], deadline: float | None = None) -> T:
        """`step`, failing with TimeoutError after `deadline` seconds (a lease)."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation
        # that arrives as the step completes, and aclose() would wait for ever.
        async with asyncio.timeout(self.lease if deadline is None else deadline):
            return await step

    async def _stand_by(self, connection: AsyncConnection[tuple[Any, ...]]) -> None:
        """Returns once elected."""
        while not self._closing:
            await self._within(connection.execute("BEGIN"))
            sent = self._clock()
            cursor = await self._within(connection.execute(_TAKE, (self.key,)))
            row = await cursor.fetchone()
            if row is not None and row[0] is True:
                self._elect(sent)
                return
            await self._within(connection.execute("ROLLBACK"))
            self.leader = await self._within(_read_holder(connection, self.key))
            await asyncio.sleep(self.retry_every)

    async def _lead(self, connection: AsyncConnection[tuple[Any, ...]]) -> None:
        """Heartbeats until deposed, then returns."""
        last_sent = self._clock()
        while not self._closing:
            await asyncio.sleep(max(0.0, last_sent + self._beat_every - self._clock()))
            valid_until = self._valid_until
            assert valid_until is not None  # only _lead deposes while leading
            last_sent = self._clock()
            if last_sent >= valid_until:
                self._depose("the lease ran out before the next heartbeat (the process stalled)")
                return
            try:
                await self._within(connection.execute(_HEARTBEAT), valid_until - last_sent)
            except _SESSION_ERRORS as error:
                self._depose(f"the heartbeat failed ({_describe(error)})")
                return
            # Answered, but after the lease ran out (a stall while it was away): the
            # server may have ended the session since, and another process taken over.
            if self._clock() >= valid_until:
                self._depose("the heartbeat was answered after the lease ran out")
                return
            self._valid_until = last_sent + self._trusted_for
            self._notify(self._on_heartbeat)

    def _elect(self, sent: float) -> None:
        self._valid_until = sent + self._trusted_for
        self.elections += 1
        self.leader_since = datetime.now(UTC)
        self.leader = LeaderInfo(identity=self.identity, since=self.leader_since)
        self.standing_by.clear()
        self.leading.set()
        log.info("leadership: elected leader (%s, election %d)", self.identity, self.elections)
        self._notify(self._on_elected)

    def _depose(self, reason: str) -> None:
        self._valid_until = None
        self.leader_since = None
        self.leader = None
        self.leading.clear()
        self.standing_by.set()
        log.warning("leadership: no longer leader: %s", reason)
        if self._on_deposed is not None:
            try:
                self._on_deposed(reason)
            except Exception:
                log.exception("leadership: on_deposed failed")

    @staticmethod
    def _notify(callback: Callable[[], None] | None) -> None:
        if callback is not None:
            try:
                callback()
            except Exception:
                # The caller's bug must not stop the heartbeats that keep the lease.
                log.exception("leadership: a callback failed")
