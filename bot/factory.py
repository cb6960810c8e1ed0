"""The factory: the bridge's parts, one function per concern, and `build()`, the one
place that assembles them.

The `create_*` functions follow the flow (storage; Telegram and polling; tracker;
invites; joins; courier and AdTarget; follow-ups; admin; ops). Each makes its
part from the settings and the parts it is handed. Every "when X happens, do Y"
is a constructor argument: nothing is hooked onto an object after it is made, so
what a part calls is read where it is built. `build()` calls them in the order
their dependencies allow, which is not quite the flow's (the courier exists
before the joins that feed it; the tracker, which serves them all, comes last).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.client.telegram import TelegramAPIServer

from bot.admin.alerts import courier_alerts, pool_empty_alert, unreadable_alert
from bot.admin.chart_command import ChartCommand
from bot.admin.commands import AdminCommands
from bot.admin.gate import AdminGate
from bot.admin.notifier import Notifier
from bot.admin.onboarding import Onboarding
from bot.adtarget.client import AdTargetClient
from bot.adtarget.sync import ChannelSync
from bot.cluster.leadership import Leadership, default_identity
from bot.cluster.roles import Election, SoleLeader
from bot.courier.service import Courier
from bot.courier.verdicts import CourierConfig
from bot.followups.lead import LeadFollowUps
from bot.followups.lead_command import LeadCommand
from bot.followups.stay import StayChecker
from bot.followups.stay_command import StayCommand
from bot.invites.minter import InviteMinter
from bot.invites.pool import InvitePool
from bot.joins.recorder import JoinRecorder, ReportingPolicy
from bot.joins.requests import JoinRequestApprover
from bot.ops.metrics import Metrics, Watched
from bot.ops.privacy import ForgetCommand, PrivacySweeper
from bot.ops.watchdog import Watchdog, WatchdogConfig
from bot.polling.batches import BatchSink, PollerStats
from bot.polling.poller import Poller, PollerConfig
from bot.polling.session import UpdatesSession
from bot.settings import Settings
from bot.token_bucket import TokenBucket
from bot.tracker.guards import TrackerConfig
from bot.tracker.health import Health
from bot.tracker.server import Tracker
from bot.tracker.visits import VisitRecorder
from handlers import get_routers
from handlers.services import Services
from storage.db import (
    Database,
    open_database,
    open_database_url,
    open_readonly,
    open_reads_url,
)


@dataclass
class Bridge:
    """Everything one running bridge is made of, by concern in the flow's order:
    what bot/app.py starts and stops, and what tests and the sandbox look into."""

    settings: Settings
    # storage
    db: Database
    reads: Database  # read-only, for /metrics and /healthz counts
    # which process leads: the only one on SQLite, elected on PostgreSQL
    election: Election
    # Telegram and polling
    bot: Bot
    dispatcher: Dispatcher
    poller: Poller
    # tracker
    visits: VisitRecorder
    health: Health
    tracker: Tracker
    # invites
    minter: InviteMinter
    pool: InvitePool
    # joins
    joins: JoinRecorder
    join_requests: JoinRequestApprover
    # courier and AdTarget
    adtarget: AdTargetClient
    courier: Courier
    # follow-ups
    stay: StayChecker
    # admin: the alerts, and what the handlers are given
    notifier: Notifier
    services: Services
    # ops
    metrics: Metrics
    watchdog: Watchdog
    privacy: PrivacySweeper
    tracker_url: str = ""  # known once the tracker listens (bot/app.py)

    async def close(self) -> None:
        await self.visits.aclose()
        await self.adtarget.aclose()
        await self.bot.session.close()
        await self.reads.close()
        await self.db.close()


async def build(settings: Settings) -> Bridge:
    db, reads = await open_storage(settings)
    election = create_election(settings)
    # This bridge's own registry (several bridges in one process keep apart), first:
    # the bot's session and the AdTarget client report to it from their first call.
    metrics = Metrics()
    bot = create_bot(settings, metrics)
    notifier = Notifier(bot, settings.admin_ids)
    adtarget = create_adtarget(settings, metrics)
    courier = create_courier(settings, db, adtarget, notifier)
    minter, pool = create_invites(settings, bot, db, notifier)
    stay = create_stay_checker(settings, bot, db, courier)

    def attributed_join() -> None:
        pool.wake()  # revoke the used link soon after the join
        stay.wake()  # schedule its stay check, if the channel has the stay signal on

    joins = create_join_recorder(settings, db, courier, on_attributed_join=attributed_join)
    join_requests = JoinRequestApprover(bot, db, joins, approve=settings.approve_join_requests)
    visits = VisitRecorder(db, courier.wake, forwards_max=settings.outbox_forwards_max)
    poll_stats = PollerStats()
    services = create_services(
        settings, bot, db, adtarget, courier, minter, pool, notifier, poll_stats
    )
    dispatcher = create_dispatcher(services)
    poller = create_poller(
        settings,
        bot,
        dispatcher,
        db,
        [joins, join_requests],
        poll_stats,
        courier,
        notifier,
        may_poll=lambda: election.is_leader,
    )
    health = Health(
        db,
        reads,
        poll_stats,
        courier,
        pool,
        election,
        courier_enabled=settings.courier_enabled,
    )
    watchdog = create_watchdog(settings, poll_stats, notifier)
    tracker = create_tracker(settings, db, visits, pool, health, metrics, watchdog)
    # Last: /metrics reads counts from every part, the tracker's included.
    metrics.watch(
        reads,
        Watched(
            poller=poll_stats,
            joins=joins,
            join_requests=join_requests,
            courier=courier,
            pool=pool,
            visits=visits,
            invites_handed_out=lambda: tracker.invites_handed_out,
            election=election,
        ),
    )
    return Bridge(
        settings=settings,
        db=db,
        reads=reads,
        election=election,
        bot=bot,
        dispatcher=dispatcher,
        poller=poller,
        visits=visits,
        health=health,
        tracker=tracker,
        minter=minter,
        pool=pool,
        joins=joins,
        join_requests=join_requests,
        adtarget=adtarget,
        courier=courier,
        stay=stay,
        notifier=notifier,
        services=services,
        metrics=metrics,
        watchdog=watchdog,
        privacy=PrivacySweeper(db, settings.retention_days),
    )


# ---- storage ---------------------------------------------------------------------


async def open_store(settings: Settings, *, readonly: bool = False) -> Database:
    """The configured store for a command beside the bridge: PostgreSQL at
    DATABASE_URL, else the SQLite file at DATABASE_PATH (`readonly`: opened for
    reading only, no migrations)."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        return await (open_reads_url(url) if readonly else open_database_url(url))
    if readonly:
        return await open_readonly(settings.database_path)
    return await open_database(settings.database_path)


async def open_storage(settings: Settings) -> tuple[Database, Database]:
    """The database (PostgreSQL at DATABASE_URL, else SQLite at DATABASE_PATH), and a
    second handle on it for the counts /metrics and /healthz read."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        db = await open_database_url(url)
        try:
            return db, await open_reads_url(url)
        except BaseException:
            await db.close()
            raise
    db = await open_database(settings.database_path)
    return db, await open_readonly(settings.database_path)


def create_election(settings: Settings) -> Election:
    """With DATABASE_URL, several processes may share the store: they elect the one
    that polls, sends and fills the pools. Alone on SQLite, this process leads."""
    if settings.database_url is None:
        return SoleLeader(default_identity())
    return Leadership(settings.database_url.get_secret_value(), lease=settings.leader_lease)


# ---- Telegram and polling --------------------------------------------------------


def create_bot(settings: Settings, metrics: Metrics) -> Bot:
    session = UpdatesSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    session.middleware(metrics.telegram_middleware())
    return Bot(settings.bot_token.get_secret_value(), session=session)


def create_dispatcher(services: Services) -> Dispatcher:
    """The routers, and `services` as the one workflow data every handler may ask for
    (handlers/services.py)."""
    # No conversation state is kept between messages: without FSM every update
    # skips a storage lookup and two middlewares.
    dispatcher = Dispatcher(disable_fsm=True, services=services)
    dispatcher.include_routers(*get_routers())
    return dispatcher


def create_poller(
    settings: Settings,
    bot: Bot,
    dispatcher: Dispatcher,
    db: Database,
    sinks: Sequence[BatchSink],
    stats: PollerStats,
    courier: Courier,
    notifier: Notifier,
    *,
    may_poll: Callable[[], bool],
) -> Poller:
    return Poller(
        bot,
        dispatcher,
        db,
        sinks,
        PollerConfig(
            timeout=settings.poll_timeout,
            limit=settings.poll_limit,
            update_retry_base=settings.update_retry_base,
            head_start=settings.poll_head_start,
        ),
        stats=stats,
        sends_written=courier.sends_written,
        on_unreadable=lambda found: unreadable_alert(notifier, found),
        may_poll=may_poll,
    )


# ---- tracker ---------------------------------------------------------------------


def create_tracker(
    settings: Settings,
    db: Database,
    visits: VisitRecorder,
    pool: InvitePool,
    health: Health,
    metrics: Metrics,
    watchdog: Watchdog,
) -> Tracker:
    return Tracker(
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


# ---- invites ---------------------------------------------------------------------


def create_invites(
    settings: Settings, bot: Bot, db: Database, notifier: Notifier
) -> tuple[InviteMinter, InvitePool]:
    minter = InviteMinter(bot, db, ttl=settings.invite_ttl)
    pool = InvitePool(
        bot,
        minter,
        db,
        size=settings.invite_pool_size,
        per_client=settings.invite_links_per_client_hour,
        pace=settings.invite_mint_interval,
        on_empty=lambda chat_id, title: pool_empty_alert(notifier, chat_id, title),
    )
    return minter, pool


# ---- joins -----------------------------------------------------------------------


def create_join_recorder(
    settings: Settings,
    db: Database,
    courier: Courier,
    *,
    on_attributed_join: Callable[[], None],
) -> JoinRecorder:
    policy = ReportingPolicy(
        default_event=settings.default_event,
        site_id=settings.adtarget_site_id,
        send_organic=settings.send_organic,
    )
    return JoinRecorder(db, policy, courier, on_attributed_join=on_attributed_join)


# ---- courier and AdTarget --------------------------------------------------------


def create_adtarget(settings: Settings, metrics: Metrics) -> AdTargetClient:
    return AdTargetClient(
        settings.adtarget_api_url,
        settings.adtarget_api_key,
        timeout=settings.adtarget_timeout,
        pacer=TokenBucket(settings.adtarget_rate_per_minute / 60.0, settings.adtarget_burst),
        # The courier's sends, plus reads (lead checks, /sync, /lead) beside them.
        max_connections=settings.courier_concurrency + 2,
        on_answer=metrics.adtarget_answered,
    )


def create_courier(
    settings: Settings, db: Database, adtarget: AdTargetClient, notifier: Notifier
) -> Courier:
    return Courier(db, adtarget, courier_config(settings), courier_alerts(notifier))


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
        sole_process=settings.database_url is None,
    )


# ---- follow-ups ------------------------------------------------------------------


def create_stay_checker(
    settings: Settings, bot: Bot, db: Database, courier: Courier
) -> StayChecker:
    rate = settings.stay_check_rate
    return StayChecker(
        bot, db, pacer=TokenBucket(rate, max(1, int(rate))), wake_courier=courier.wake
    )


# ---- admin -----------------------------------------------------------------------


def create_services(
    settings: Settings,
    bot: Bot,
    db: Database,
    adtarget: AdTargetClient,
    courier: Courier,
    minter: InviteMinter,
    pool: InvitePool,
    notifier: Notifier,
    poll_stats: PollerStats,
) -> Services:
    """What the handlers are given: the logic behind each admin command."""
    gate = AdminGate(bot, db, settings.admin_ids)
    commands = AdminCommands(db, gate, courier, pool, minter, settings.default_event)
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
    return Services(
        gate=gate,
        onboarding=onboarding,
        commands=commands,
        chart_command=ChartCommand(db, commands),
        channel_sync=ChannelSync(adtarget, db),
        lead_command=LeadCommand(db, gate, commands, LeadFollowUps(db, adtarget, courier.wake)),
        stay_command=StayCommand(db, commands),
        forget_command=ForgetCommand(db, settings.admin_ids),
    )


# ---- ops -------------------------------------------------------------------------


def create_watchdog(settings: Settings, poll_stats: PollerStats, notifier: Notifier) -> Watchdog:
    return Watchdog(
        settings.database_path,
        poll_stats,
        notifier,
        WatchdogConfig(
            poll_alert_after=settings.poll_alert_minutes * 60,
            min_free_bytes=settings.min_free_disk_mb * 2**20,
        ),
    )
