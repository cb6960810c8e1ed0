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
    log.info("Joinbridge started (database %s)", settings.database_path)
    tasks = {
        asyncio.create_task(bridge.poller.run(stop), name="poller"),
        asyncio.create_task(bridge.pool.run(stop), name="invite-pool"),
        asyncio.create_task(bridge.join_requests.run(stop), name="join-requests"),
        asyncio.create_task(bridge.db.upkeep(stop), name="database-upkeep"),
        asyncio.create_task(bridge.notifier.run(stop), name="notifier"),
        asyncio.create_task(bridge.stay.run(stop), name="stay-checks"),
        asyncio.create_task(bridge.watchdog.run(stop), name="watchdog"),
    }
    # Not among `tasks`: those run until stop, and the first to end ends the bridge.
    first_contact = asyncio.create_task(_first_contact(bridge), name="first-contact")
    if settings.courier_enabled:
        tasks.add(asyncio.create_task(bridge.courier.run(stop), name="courier"))
    else:
        log.warning("COURIER_ENABLED=false: conversions are queued, not sent")
    if settings.retention_days:  # 0: personal fields are kept forever
        tasks.add(asyncio.create_task(bridge.privacy.run(stop), name="privacy-sweep"))
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
        first_contact.cancel()
        await runner.cleanup()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.close()
        log.info("Joinbridge stopped")
    return status
