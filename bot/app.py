"""The lifecycle: build the bridge (bot/factory.py), serve the tracker, run the
poller, the courier and the background loops until stop, and shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from aiogram.types import BotCommand, BotCommandScopeAllPrivateChats
from aiohttp import web

from bot.admin.commands import COMMANDS
from bot.factory import Bridge, build
from bot.polling.calls import BadBotToken
from bot.settings import Settings
from bot.waiting import wait_any

# Bridge is what `on_ready` is given: callers of run_bridge name it from here.
__all__ = ["Bridge", "run_bridge"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_TOKEN = 3


class AlreadyRunning(RuntimeError):
    pass


@contextlib.contextmanager
def instance_lock(database_path: Path) -> Iterator[None]:
    """One bridge per database: two would both poll (409) and both send."""
    database_path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(f"{database_path}.lock", "a")  # noqa: SIM115 - held for the run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(str(database_path)) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


async def start_tracker(bridge: Bridge) -> web.AppRunner:
    """Serve the tracker; in-flight requests get a few seconds to finish at stop."""
    runner = web.AppRunner(bridge.tracker.app(), access_log=None, shutdown_timeout=3.0)
    await runner.setup()
    site = web.TCPSite(runner, bridge.settings.tracker_host, bridge.settings.tracker_port)
    await site.start()
    host, port = runner.addresses[0][:2]
    bridge.tracker_url = f"http://{host}:{port}"
    log.info("tracker listening on %s", bridge.tracker_url)
    return runner


async def _lead(bridge: Bridge, stop: asyncio.Event) -> None:
    """Run the leader's jobs for each term this process leads, until stop.

    Alone on SQLite the first term lasts until stop. On PostgreSQL a term ends
    when the election deposes this process (a stall, a lost connection): its jobs
    stop, and it stands by, serving the tracker, until it is elected again."""
    election = bridge.election
    while not stop.is_set():
        if not (election.leading.is_set() and election.is_leader):
            if election.leading.is_set():
                # The lease ran out before the election noticed (a stall): wait for
                # it to stand by rather than start a term the poller would end.
                await wait_any(election.standing_by, stop, timeout=None)
            else:
                await wait_any(election.leading, stop, timeout=None)
            continue
        if bridge.settings.database_url is not None:
            log.warning("elected leader: polling Telegram, sending, filling the invite pools")
        await _term(bridge, stop)
        if not stop.is_set():
            log.warning("no longer the leader: standing by, serving the tracker")


async def _term(bridge: Bridge, stop: asyncio.Event) -> None:
    term = asyncio.Event()  # this term's stop: the bridge's, or a deposition
    jobs = _leader_jobs(bridge, term)
    ends = asyncio.create_task(
        wait_any(bridge.election.standing_by, stop, timeout=None), name="term-end"
    )
    # Not among `jobs`: those run until the term ends, and the first to end ends it.
    first_contact = asyncio.create_task(_first_contact(bridge), name="first-contact")
    try:
        done, _ = await asyncio.wait({*jobs, ends}, return_when=asyncio.FIRST_COMPLETED)
        for job in done - {ends}:
            # A job that fails (a rejected token) ends the bridge with its error. One
            # that returns ends the term: the poller does when it finds itself
            # deposed; while this process still leads, it ends the bridge, as the
            # first job to end always has.
            error = job.exception()
            if error is not None:
                raise error
            if bridge.election.is_leader and not stop.is_set():
                log.warning("%s ended; stopping", job.get_name())
                stop.set()
    finally:
        term.set()
        ends.cancel()
        first_contact.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


def _leader_jobs(bridge: Bridge, term: asyncio.Event) -> set[asyncio.Task[None]]:
    """What only the leader does: everything that talks to Telegram (one getUpdates
    consumer per token) or sends to AdTarget (one rate limit per key)."""
    settings = bridge.settings
    jobs = {
        asyncio.create_task(bridge.poller.run(term), name="poller"),
        asyncio.create_task(bridge.pool.run(term), name="invite-pool"),
        asyncio.create_task(bridge.join_requests.run(term), name="join-requests"),
        asyncio.create_task(bridge.stay.run(term), name="stay-checks"),
        asyncio.create_task(bridge.watchdog.run(term), name="watchdog"),
    }
    if settings.courier_enabled:
        jobs.add(asyncio.create_task(bridge.courier.run(term), name="courier"))
        # Rows other processes queue (their trackers' visits) wake it at once; alone
        # on SQLite this only waits for the term's end.
        jobs.add(asyncio.create_task(bridge.courier.listen(term), name="courier-wake"))
    else:
        log.warning("COURIER_ENABLED=false: conversions are queued, not sent")
    if settings.retention_days:  # 0: personal fields are kept forever
        jobs.add(asyncio.create_task(bridge.privacy.run(term), name="privacy-sweep"))
    return jobs


async def _first_contact(bridge: Bridge) -> None:
    """Once at start: the command menu and AdTarget's channel mapping. Failures are
    logged; neither is needed for joins to be recorded and reported."""
    try:
        await bridge.bot.set_my_commands(
            [BotCommand(command=name, description=text) for name, text in COMMANDS.items()],
            scope=BotCommandScopeAllPrivateChats(),
        )
    except Exception as error:
        log.warning("setMyCommands failed: %s", error)
    await bridge.services.channel_sync.run_quietly()


async def run_bridge(
    settings: Settings, stop: asyncio.Event, on_ready: Callable[[Bridge], None] | None = None
) -> int:
    """Run until `stop` is set (or the token is rejected); return the exit status.

    `on_ready` receives the built bridge (tests use it to reach the services).
    """
    if settings.database_url is not None:
        # Several processes may share PostgreSQL: the election, not a file lock,
        # decides which of them polls and sends.
        return await _run_locked(settings, stop, on_ready)
    try:
        with instance_lock(settings.database_path):
            return await _run_locked(settings, stop, on_ready)
    except AlreadyRunning as error:
        log.error("another Joinbridge process is already using the database %s", error)
        return EXIT_FAILED


async def _run_locked(
    settings: Settings, stop: asyncio.Event, on_ready: Callable[[Bridge], None] | None
) -> int:
    bridge = await build(settings)
    try:
        runner = await start_tracker(bridge)
    except OSError as error:
        log.error(
            "tracker cannot listen on %s:%d (%s): set TRACKER_HOST / TRACKER_PORT",
            settings.tracker_host,
            settings.tracker_port,
            error.strerror or error,
        )
        await bridge.close()
        return EXIT_FAILED
    if on_ready is not None:
        on_ready(bridge)
    log.info(
        "Joinbridge started (%s)",
        "PostgreSQL at DATABASE_URL"
        if settings.database_url is not None
        else f"database {settings.database_path}",
    )
    bridge.election.start()
    tasks = {
        asyncio.create_task(_lead(bridge, stop), name="leader"),
        asyncio.create_task(bridge.db.upkeep(stop), name="database-upkeep"),
        asyncio.create_task(bridge.notifier.run(stop), name="notifier"),
    }
    status = EXIT_OK
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            failure = task.exception()
            if isinstance(failure, BadBotToken):
                log.error(
                    "Telegram rejected the bot token (401 Unauthorized): check BOT_TOKEN"
                    " (from @BotFather); stopping"
                )
                status = EXIT_BAD_TOKEN
            elif failure is not None:
                log.error("%s stopped: %r", task.get_name(), failure, exc_info=failure)
                status = EXIT_FAILED
    finally:
        stop.set()
        await runner.cleanup()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.election.aclose()
        await bridge.close()
        log.info("Joinbridge stopped")
    return status
