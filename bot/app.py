"""The factory and lifecycle: build bot, dispatcher and services in one visible
place, run the poller and the courier, and shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiogram import Bot, Dispatcher
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import BotCommand, BotCommandScopeAllPrivateChats
from aiohttp import web

from bot.admin.alerts import courier_alerts, pool_empty_alert, unreadable_alert
from bot.admin.chart_command import ChartConsole
from bot.admin.commands import COMMANDS, Console
from bot.admin.gate import AdminGate
from bot.admin.notifier import Notifier
from bot.admin.onboarding import Onboarding
from bot.adtarget.client import AdTargetClient
from bot.adtarget.sync import ChannelSync
from bot.courier.pacing import TokenBucket
from bot.courier.service import Courier
from bot.courier.verdicts import CourierConfig
from bot.followups.lead import LeadFollowUps
from bot.followups.lead_command import LeadsConsole
from bot.followups.stay import StayChecker
from bot.followups.stay_command import StayCommand
from bot.invites.minter import InviteMinter
from bot.invites.pool import InvitePool
from bot.joins.recorder import JoinRecorder, ReportingPolicy
from bot.joins.requests import JoinRequestApprover
from bot.ops.metrics import Metrics, Watched
from bot.ops.privacy import ForgetCommand, PrivacySweeper
from bot.ops.watchdog import Watchdog, WatchdogConfig
from bot.polling.batches import PollerStats
from bot.polling.calls import BadBotToken
from bot.polling.poller import Poller, PollerConfig
from bot.polling.session import UpdatesSession
from bot.settings import Settings
from bot.tracker.guards import TrackerConfig
from bot.tracker.health import Health
from bot.tracker.server import Tracker
from bot.tracker.visits import VisitRecorder
from handlers import get_routers
from storage.db import Database, open_database, open_readonly

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


@dataclass
class Bridge:
    """Everything one running bridge is made of."""

    settings: Settings
    db: Database
    reads: Database  # read-only, for /metrics and /healthz counts
    bot: Bot
    dispatcher: Dispatcher
    adtarget: AdTargetClient
    courier: Courier
    joins: JoinRecorder
    minter: InviteMinter
    pool: InvitePool
    join_requests: JoinRequestApprover
    visits: VisitRecorder
    poller: Poller
    health: Health
    tracker: Tracker
    notifier: Notifier
    channel_sync: ChannelSync
    stay: StayChecker
    privacy: PrivacySweeper
    metrics: Metrics
    watchdog: Watchdog
    tracker_url: str = ""

    async def close(self) -> None:
        await self.visits.aclose()
        await self.adtarget.aclose()
        await self.bot.session.close()
        await self.reads.close()
        await self.db.close()


async def build(settings: Settings) -> Bridge:
    db = await open_database(settings.database_path)
    reads = await open_readonly(settings.database_path)
    session = UpdatesSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    bot = Bot(settings.bot_token.get_secret_value(), session=session)
    # This bridge's own registry: several bridges in one process keep apart.
    metrics = Metrics()
    session.middleware(metrics.telegram_middleware())
    adtarget = AdTargetClient(
        settings.adtarget_api_url,
        settings.adtarget_api_key,
        timeout=settings.adtarget_timeout,
        pacer=TokenBucket(settings.adtarget_rate_per_minute / 60.0, settings.adtarget_burst),
        # The courier's sends, plus reads (lead checks, /sync, /lead) beside them.
        max_connections=settings.courier_concurrency + 2,
    )
    adtarget.on_answer = metrics.adtarget_answered
    notifier = Notifier(bot, settings.admin_ids)
    poll_stats = PollerStats()
    courier = Courier(db, adtarget, courier_config(settings), courier_alerts(notifier))
    joins = JoinRecorder(
        db,
        ReportingPolicy(
            default_event=settings.default_event,
            site_id=settings.adtarget_site_id,
            send_organic=settings.send_organic,
        ),
        courier,
    )
    minter = InviteMinter(bot, db, ttl=settings.invite_ttl)
    pool = InvitePool(
        bot,
        minter,
        db,
        size=settings.invite_pool_size,
        per_client=settings.invite_links_per_client_hour,
        pace=settings.invite_mint_interval,
    )
    rate = settings.stay_check_rate
    stay = StayChecker(
        bot, db, pacer=TokenBucket(rate, max(1, int(rate))), wake_courier=courier.wake
    )

    def attributed_join() -> None:
        pool.wake()  # revoke the used link soon after the join
        stay.wake()  # schedule its stay check, if the channel has the stay signal on

    joins.on_attributed_join = attributed_join

    pool.on_empty = lambda chat_id, title: pool_empty_alert(notifier, chat_id, title)
    approver = JoinRequestApprover(bot, db, joins, approve=settings.approve_join_requests)
    visits = VisitRecorder(db, courier.wake, forwards_max=settings.outbox_forwards_max)
    channel_sync = ChannelSync(adtarget, db)
    gate = AdminGate(bot, db, settings.admin_ids)
    onboarding = Onboarding(
        bot,
        db,
        gate,
        notifier,
        tracker_url=settings.public_tracker_url,
        default_event=settings.default_event,
        bot_name=lambda: f"@{poll_stats.username}" if poll_stats.username else "the bot",
        pool=pool,
    )
    console = Console(db, gate, courier, pool, minter, settings.default_event)
    # No conversation state is kept between messages: without FSM every update
    # skips a storage lookup and two middlewares.
    dispatcher = Dispatcher(disable_fsm=True)
    dispatcher.include_routers(*get_routers())
    # Handlers receive these as typed parameters (aiogram workflow data).
    dispatcher.workflow_data.update(
        settings=settings,
        joins=joins,
        minter=minter,
        onboarding=onboarding,
        console=console,
        leads_console=LeadsConsole(db, gate, console, LeadFollowUps(db, adtarget, courier.wake)),
        stay_command=StayCommand(db, console),
        chart_console=ChartConsole(db, console),
        channel_sync=channel_sync,
        privacy=ForgetCommand(db, settings.admin_ids),
        gate=gate,
    )
    poller = Poller(
        bot,
        dispatcher,
        db,
        [joins, approver],
        PollerConfig(
            timeout=settings.poll_timeout,
            limit=settings.poll_limit,
            update_retry_base=settings.update_retry_base,
            head_start=settings.poll_head_start,
        ),
        stats=poll_stats,
        sends_written=courier.sends_written,
        on_unreadable=lambda found: unreadable_alert(notifier, found),
    )
    health = Health(
        db, reads, poller.stats, courier, pool, courier_enabled=settings.courier_enabled
    )
    watchdog = Watchdog(
        settings.database_path,
        poll_stats,
        notifier,
        WatchdogConfig(
            poll_alert_after=settings.poll_alert_minutes * 60,
            min_free_bytes=settings.min_free_disk_mb * 2**20,
        ),
    )
    tracker = Tracker(
        db,
        visits,
        pool,
        health,
        TrackerConfig(
            trusted_proxies=settings.trusted_proxies,
            allowed_origins=settings.tracker_allowed_origins,
            token=settings.tracker_token.get_secret_value() if settings.tracker_token else None,
            rate_per_minute=settings.tracker_rate_per_minute,
            burst=settings.tracker_burst,
            visits_per_hour=settings.tracker_visits_per_hour,
            body_timeout=settings.tracker_body_timeout,
        ),
        metrics=metrics.exposition if settings.metrics_enabled else None,
        storage_low=lambda: watchdog.disk_low,
    )
    metrics.watch(
        reads,
        Watched(
            poller=poll_stats,
            joins=joins,
            join_requests=approver,
            courier=courier,
            pool=pool,
            visits=visits,
            invites_handed_out=lambda: tracker.invites_handed_out,
        ),
    )
    return Bridge(
        settings=settings,
        db=db,
        reads=reads,
        bot=bot,
        dispatcher=dispatcher,
        adtarget=adtarget,
        courier=courier,
        joins=joins,
        minter=minter,
        pool=pool,
        join_requests=approver,
        visits=visits,
        poller=poller,
        health=health,
        tracker=tracker,
        notifier=notifier,
        channel_sync=channel_sync,
        stay=stay,
        privacy=PrivacySweeper(db, settings.retention_days),
        metrics=metrics,
        watchdog=watchdog,
    )


def courier_config(settings: Settings) -> CourierConfig:
    return CourierConfig(
        concurrency=settings.courier_concurrency,
        request_timeout=settings.adtarget_timeout,
        backoff_base=settings.backoff_base,
        backoff_cap=settings.backoff_cap,
        retry_window=settings.retry_window,
        idempotency_window=settings.idempotency_window,
        auth_probe_interval=settings.auth_probe_interval,
        billing_probe_interval=settings.billing_probe_interval,
        shutdown_grace=settings.shutdown_grace,
        forwards_max_age=settings.outbox_forwards_max_age,
    )


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
    await bridge.channel_sync.run_quietly()


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
        asyncio.create_task(bridge.db.checkpoints(stop), name="wal-checkpoints"),
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
