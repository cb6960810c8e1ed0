"""`joinbridge` (or `joinbridge run`): run the bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys

from pydantic import ValidationError

from bot import logs
from bot.settings import Settings, describe_error


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        print(f"joinbridge: configuration error: {describe_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def secrets(settings: Settings) -> list[str]:
    """Every configured secret, for the log formatter to keep out of every line."""
    found = [settings.bot_token, settings.adtarget_api_key, settings.tracker_token]
    values = [secret.get_secret_value() for secret in found if secret is not None]
    if settings.database_url is not None:
        from bot.cluster.database_url import passwords

        values += passwords(settings.database_url.get_secret_value())
    return values


async def _serve(settings: Settings) -> int:
    from bot.app import run_bridge  # imports aiogram: after settings are known good

    # aiogram's import leaves some 100 MB of long-lived objects (its pydantic
    # models). Freezing them keeps the collector from walking them again and
    # again, which otherwise shows up as 20-50 ms stalls under load.
    gc.collect()
    gc.freeze()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await run_bridge(settings, stop)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """`run` takes no arguments: everything comes from the environment (.env)."""


def preflight(settings: Settings) -> None:
    """What the bridge cannot start without and doctor already checks: the database
    path and the tracker's address. A problem is one line and exit status 2, as for
    a bad setting, instead of a traceback from deep inside the start."""
    from bot.doctor.checklist import Status
    from bot.doctor.local import database_path_problem, tracker_port

    for check in (
        database_path_problem(settings.database_path),
        tracker_port(settings.tracker_host, settings.tracker_port, settings.database_path),
    ):
        if check is not None and check.status is Status.FAIL:
            print(f"joinbridge: {check.detail}: {check.fix}", file=sys.stderr)
            raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    preflight(settings)
    logs.configure(settings.log_level, secrets(settings), settings.log_format)
    return asyncio.run(_serve(settings))
