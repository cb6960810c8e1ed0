"""`joinbridge sandbox`: try the bridge without credentials.

Starts the simulators of Telegram and AdTarget on loopback ports and the real
bridge against them, in this one process, walks a visitor through visit ->
invite link -> join -> conversion, then keeps the tracker up for curl and takes
a few commands on stdin. Ctrl-C stops it (exit 0); `--once` walks through once
and exits (0 when every step happened, 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import io
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot import logs

if TYPE_CHECKING:  # the modules themselves import aiogram: only once the arguments are good
    from bot.app import Bridge
    from bot.sandbox.core import Sandbox
    from bot.simulators.adtarget import FakeAdTarget
    from bot.simulators.telegram import FakeTelegram

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
GOODBYE = "Stopping the sandbox."


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--once",
        action="store_true",
        help="walk through once and exit: 0 when every step happened, 1 otherwise",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="the tracker's port on 127.0.0.1 (default 8080; 0 picks a free one)",
    )
    parser.add_argument(
        "--database",
        type=Path,
        default=None,
        metavar="FILE",
        help="the SQLite file to use (default: a new one in a temporary directory,"
        " deleted at exit)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also print the bridge's own log lines (stderr)"
    )


def _usage_problem(args: argparse.Namespace) -> str | None:
    """A mistake in the arguments, said in one line; None when they are usable."""
    database: Path | None = args.database
    if database is not None and database.is_dir():
        return f"--database: {database} is a directory; give a file name"
    if database is not None and database.parent.exists() and not database.parent.is_dir():
        return f"--database: {database.parent} is not a directory"
    if args.port and not _port_free(args.port):
        return (
            f"--port: 127.0.0.1:{args.port} is already in use;"
            " pass another port, or --port 0 for any free one"
        )
    return None


def _port_free(port: int) -> bool:
    # Checked before anything starts, so a busy port is one clear line, not a failed start.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            return error.errno != errno.EADDRINUSE
    return True


def _free_port() -> int:
    # Chosen here rather than left to the bind, so that the settings, and the
    # onboarding message's snippet built from them, name the port in use.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _database(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    folder = Path(tempfile.mkdtemp(prefix="joinbridge-sandbox-"))
    try:
        yield folder / "sandbox.db"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem is not None:
        print(f"joinbridge sandbox: {problem}", file=sys.stderr)
        return EXIT_USAGE
    args.port = args.port or _free_port()
    # The walkthrough prints arrows and quotes: a terminal that cannot show them gets
    # a replacement character rather than a crash.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")
    from bot.sandbox.core import SANDBOX_TOKEN  # imports aiogram: after the arguments are good
    from bot.simulators.adtarget import FakeAdTarget

    logs.configure("INFO" if args.verbose else "WARNING", [SANDBOX_TOKEN, FakeAdTarget.API_KEY])
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return EXIT_OK


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Ctrl-C is the usual way out, and a clean stop (exit 0). SIGHUP too: a closed
    # terminal, or a shell that exits while the sandbox is stopped, ends it the
    # same way, so its temporary database goes with it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)

    from bot.sandbox.core import simulators

    telegram, adtarget = simulators()
    with _database(args.database) as database:
        await telegram.start()
        await adtarget.start()
        try:
            return await _with_bridge(args, database, telegram, adtarget, stop)
        finally:
            await adtarget.stop()
            await telegram.stop()


async def _with_bridge(
    args: argparse.Namespace,
    database: Path,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    stop: asyncio.Event,
) -> int:
    from bot.app import run_bridge
    from bot.sandbox.core import Sandbox, sandbox_settings

    level = "INFO" if args.verbose else "WARNING"
    settings = sandbox_settings(telegram, adtarget, database, args.port, level)
    ready: asyncio.Future[Bridge] = asyncio.get_running_loop().create_future()
    bridge_stop = asyncio.Event()
    bridge_task = asyncio.create_task(run_bridge(settings, bridge_stop, on_ready=ready.set_result))
    # A bridge that ends by itself ends the sandbox too.
    bridge_task.add_done_callback(lambda _: stop.set())
    try:
        bridge = await _started(ready, bridge_task, stop)
        outcome = EXIT_FAILED
        if bridge is not None:
            sandbox = Sandbox(telegram, adtarget, bridge)
            outcome = await _session(sandbox, args, database, stop)
        elif stop.is_set() and not bridge_task.done():
            outcome = EXIT_OK  # Ctrl-C while starting
    finally:
        bridge_stop.set()
        (status,) = await asyncio.gather(bridge_task, return_exceptions=True)
    if status != 0:
        print(f"joinbridge sandbox: the bridge stopped with {status!r}", file=sys.stderr)
        return EXIT_FAILED
    return outcome


async def _started(
    ready: asyncio.Future[Bridge], bridge_task: asyncio.Task[int], stop: asyncio.Event
) -> Bridge | None:
    from bot.sandbox.core import WAIT

    stopper = asyncio.ensure_future(stop.wait())
    awaited: set[asyncio.Future[Any]] = {ready, bridge_task, stopper}
    try:
        await asyncio.wait(awaited, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if ready.done():
        return ready.result()
    if bridge_task.done():
        error = bridge_task.exception()
        why = f"{type(error).__name__}: {error}" if error else "see the log line above"
        print(f"joinbridge sandbox: the bridge did not start ({why})", file=sys.stderr)
    elif not stop.is_set():
        print(f"joinbridge sandbox: the bridge did not start within {WAIT:.0f} s", file=sys.stderr)
    return None


async def _session(
    sandbox: Sandbox, args: argparse.Namespace, database: Path, stop: asyncio.Event
) -> int:
    from bot.sandbox.console import COMMANDS, SandboxConsole, try_it
    from bot.sandbox.core import say, until_stopped

    _introduce(sandbox, database, temporary=args.database is None)
    walked = await until_stopped(_walk(sandbox), stop)
    if walked is None:  # Ctrl-C during the walkthrough
        say(GOODBYE)
        return EXIT_OK
    if args.once:
        return EXIT_OK if walked else EXIT_FAILED
    if not walked:
        say("The walkthrough stopped there; the sandbox keeps running so you can look around.")
    say()
    say(try_it(sandbox.tracker_url))
    say()
    say(COMMANDS)
    say()
    say(f"Sandbox ready: tracker on {sandbox.tracker_url} (Ctrl-C stops it)")
    await SandboxConsole(sandbox).run(stop)
    say(GOODBYE)
    return EXIT_OK


async def _walk(sandbox: Sandbox) -> bool:
    from bot.sandbox.core import StepFailed, say
    from bot.sandbox.walk import track_channel, walk_through

    try:
        await track_channel(sandbox)
        await walk_through(sandbox)
    except StepFailed as problem:
        say(f"✗ {problem}")
        return False
    say()
    say("✓ visit → invite link → join → conversion: one attributed join, reported once.")
    return True


def _introduce(sandbox: Sandbox, database: Path, *, temporary: bool) -> None:
    from bot.sandbox.core import ADTARGET_CHANNEL_ID, CHANNEL_ID, CHANNEL_TITLE, mask_key, say

    bot_name = sandbox.telegram.bot_user.get("username")
    key = mask_key(sandbox.adtarget.api_key)
    say("Joinbridge sandbox: the real bridge against built-in simulators of Telegram and")
    say("AdTarget, all in this process. No token, no .env, no network.")
    say()
    say(f"  Telegram simulator  {sandbox.telegram.url}  bot @{bot_name}, private channel")
    say(f"                      “{CHANNEL_TITLE}” ({CHANNEL_ID})")
    say(f"  AdTarget simulator  {sandbox.adtarget.url}  key {key}, channel {ADTARGET_CHANNEL_ID}")
    say(f"  Tracker             {sandbox.tracker_url}")
    say(f"  Database            {database}" + (" (deleted at exit)" if temporary else ""))
