"""The sandbox after the walkthrough: the tracker stays up for curl, and a few
commands typed in the terminal simulate joins and show /stats."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TextIO

from bot.admin.chart_command import DEFAULT_PERIOD
from bot.admin.chart_command import PERIODS as CHART_PERIODS
from bot.admin.stats import PERIODS
from bot.ops.privacy import parse_user_id
from bot.sandbox.core import (
    CHANNEL_ID,
    OWNER_ID,
    WAIT,
    Sandbox,
    StepFailed,
    as_seen,
    block,
    plain_text,
    say,
    until,
    until_stopped,
)
from bot.sandbox.walk import follow_join, simulate_join
from bot.simulators.telegram import Call

CHART_FILE = "joinbridge-chart.png"  # in the working directory, kept after the sandbox
COMMANDS = """Type here (Enter alone shows /stats):
  join <inviteLink> [telegram-user-id]  a simulated user joins through that link
  join                                  someone joins without a link (organic)
  leave <telegram-user-id>              that user leaves the channel
  stats [today|7d|30d|all]              /stats as an admin sees it in Telegram
  chart [30d|90d] [file.png]            /chart's picture, written to a file
  help                                  the curl commands and this list again
  quit                                  stop the sandbox (Ctrl-C works too)"""


def try_it(tracker_url: str) -> str:
    """Copy-pasteable curl commands against this sandbox's tracker."""
    temp_id = uuid.uuid4()
    page = "https://landing.example/offer?fbclid=IwAR_try_me&utm_source=meta&utm_campaign=spring"
    return f"""Try the tracker from another terminal:

  # 1. a visit, as the landing page's script sends it
  curl -s -X POST {tracker_url}/api/v1/events/visit \\
    -H 'Content-Type: application/json' \\
    -d '{{"tempId": "{temp_id}", "href": "{page}"}}'

  # 2. that visitor's personal invite link
  curl -s -X POST {tracker_url}/api/v1/events/invite \\
    -H 'Content-Type: application/json' \\
    -d '{{"tempId": "{temp_id}", "channelId": "{CHANNEL_ID}"}}'

  # the button without JavaScript: the click is the visit, answered by a redirect
  curl -si '{tracker_url}/track/invite?channelId={CHANNEL_ID}&fbclid=IwAR_no_js&utm_source=meta'

  # what the bridge is doing
  curl -s {tracker_url}/healthz

Then `join <inviteLink>` below makes a simulated user join through the link."""


class StdinLines:
    """Lines typed on stdin. A daemon thread reads them (a terminal, pipe or file all
    work the same), so a blocked read never holds up the stop."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        if self._stream is None:
            self._queue.put_nowait(None)
            return
        threading.Thread(target=self._read, name="sandbox-stdin", daemon=True).start()

    def _read(self) -> None:
        assert self._stream is not None
        for line in self._stream:
            if not self._hand_over(line):
                return
        self._hand_over(None)  # end of input

    def _hand_over(self, line: str | None) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        except RuntimeError:  # the loop is closed: the sandbox has stopped
            return False
        return True

    async def next(self) -> str | None:
        """The next line without its newline; None at the end of input."""
        line = await self._queue.get()
        return None if line is None else line.rstrip("\r\n")


class SandboxConsole:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def run(self, stop: asyncio.Event, stream: TextIO | None = sys.stdin) -> None:
        """Answer commands until `quit` or `stop`; at the end of input keep serving
        the tracker until `stop` (Ctrl-C or SIGTERM)."""
        lines = StdinLines(stream)
        lines.start()
        while not stop.is_set():
            line = await until_stopped(lines.next(), stop)
            if line is None:
                break
            if not await until_stopped(self.handle(line), stop):
                return  # quit, or stopped meanwhile
        await stop.wait()

    async def handle(self, line: str) -> bool:
        """One command; False to stop the sandbox."""
        words = line.split()
        command, args = (words[0].lower(), words[1:]) if words else ("stats", [])
        try:
            if command in ("quit", "exit"):
                return False
            if command == "stats":
                await self.stats(args)
            elif command == "chart":
                await self.chart(args)
            elif command == "join":
                await self.join(args)
            elif command == "leave":
                self.leave(args)
            elif command == "help":
                say(try_it(self._sandbox.tracker_url))
                say(COMMANDS)
            else:
                say(f"unknown command {command!r}; `help` lists them")
        except StepFailed as problem:
            say(f"✗ {problem}")
        return True

    async def stats(self, args: list[str]) -> None:
        if len(args) > 1 or (args and args[0].lower() not in PERIODS):
            raise StepFailed(f"stats: the period must be one of {', '.join(PERIODS)}")
        command = " ".join(["/stats", *(a.lower() for a in args)])
        telegram = self._sandbox.telegram
        asked_at = time.monotonic()
        # Asked as the bridge's admin in Telegram, so the answer is the bot's own.
        telegram.message(OWNER_ID, OWNER_ID, command)

        def answer(call: Call) -> bool:
            text = call.raw.get("text", "")
            return (
                call.at >= asked_at and call.params.get("chat_id") == OWNER_ID and "<pre>" in text
            )

        try:
            reply = await telegram.wait_for_call("sendMessage", answer, WAIT)
        except TimeoutError:
            raise StepFailed(f"no answer to {command} within {WAIT:.0f} s") from None
        say(f"{command} (what the admin sees in Telegram):")
        say(block(as_seen(reply)))

    async def chart(self, args: list[str]) -> None:
        """/chart asked as the bridge's admin; the photo the bot sends, to a file."""
        period = DEFAULT_PERIOD
        if args and args[0].lower() in CHART_PERIODS:
            period, args = args[0].lower(), args[1:]
        if len(args) > 1 or (args and not args[0].lower().endswith(".png")):
            raise StepFailed("chart: expected `chart [30d|90d] [file.png]`")
        command = f"/chart {period}"
        telegram = self._sandbox.telegram
        asked_at = time.monotonic()
        telegram.message(OWNER_ID, OWNER_ID, command)

        def answer(call: Call) -> bool:
            if call.at < asked_at or call.params.get("chat_id") != OWNER_ID:
                return False
            text = call.raw.get("text", "")
            return call.method == "sendPhoto" or text.startswith("Nothing to draw")

        async def sent() -> Call | None:
            return next((c for c in reversed(telegram.calls) if answer(c)), None)

        reply = await until(sent, f"an answer to {command}")
        png = reply.upload("photo")
        if png is None:
            say(f"{command}: {plain_text(reply.raw.get('text', ''))}")
            return
        target = await asyncio.to_thread(_write, args[0] if args else CHART_FILE, png)
        say(f"{command}: the picture the admin gets in Telegram ({len(png):,} bytes PNG):")
        say(f"    {target}")
        say(block(plain_text(reply.raw.get("caption", ""))))

    async def join(self, args: list[str]) -> None:
        if len(args) > 2:
            raise StepFailed("join: expected `join [inviteLink] [telegram-user-id]`")
        link = args[0] if args else None
        if link is not None and not link.startswith("https://t.me/"):
            raise StepFailed(f"join: {link!r} is not an invite link (https://t.me/+…)")
        user_id = _user_id(args[1]) if len(args) == 2 else self._sandbox.new_user_id()
        await follow_join(self._sandbox, await simulate_join(self._sandbox, link, user_id))

    def leave(self, args: list[str]) -> None:
        if len(args) != 1:
            raise StepFailed("leave: expected `leave <telegram-user-id>`")
        user_id = _user_id(args[0])
        update_id = self._sandbox.telegram.leave(CHANNEL_ID, user_id)
        say(f"update {update_id}: user {user_id} left; /stats counts the leave.")


def _write(name: str, data: bytes) -> Path:
    """`data` to the file `name` (relative to the working directory); its full path."""
    target = Path(name).expanduser().absolute()
    try:
        target.write_bytes(data)
    except OSError as error:
        raise StepFailed(f"chart: cannot write {target}: {error.strerror}") from None
    return target


def _user_id(text: str) -> int:
    # isdigit() alone lets "²" through to int(), whose ValueError would end the sandbox.
    try:
        return parse_user_id(text)
    except ValueError as error:
        raise StepFailed(f"telegram-user-id: {error}") from None
