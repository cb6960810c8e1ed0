"""`python -m bot sandbox` as a user runs it: a child process, no token, no network.

The sandbox must ignore a `.env` and the environment (both are poisoned here), walk
through to the conversion request, and in interactive mode answer the curl
commands it prints, joins and /stats typed on stdin, and stop on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bot.admin.chart import HEIGHT_PX, WIDTH_PX
from bot.simulators.adtarget import FakeAdTarget
from tests.harness import ROOT

START = 120.0  # seconds; generous, the machine is shared
STEP = 60.0
FBCLID = "IwAR2sandbox_Zx9"  # the walkthrough's visitor


def sandbox_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: a broken `.env` in the working directory and bad variables,
    neither of which the sandbox may read."""
    # Read, the first would stop the conversion being sent and the second would make
    # the tracker refuse the walkthrough's visit; the rest would not even validate.
    (tmp_path / ".env").write_text(
        "COURIER_ENABLED=false\nBOT_TOKEN=not-a-token\nADTARGET_API_URL=nonsense\n"
    )
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmp_path),
        "TRACKER_TOKEN": "visits-need-this",
        "BOT_TOKEN": "also-not-a-token",
        "ADTARGET_API_KEY": "",
        "ADMIN_IDS": "nobody",
    }


class Sandbox:
    """The child process and its output, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def read_until(self, pattern: str, seconds: float = STEP) -> re.Match[str]:
        """Read output until a line matches `pattern` (a regex); that match."""
        assert self.process.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            remaining = deadline - loop.time()
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), max(remaining, 0))
            except TimeoutError:
                message = f"no line like {pattern!r} in {seconds} s:\n{self.output}"
                raise AssertionError(message) from None
            if not raw:
                raise AssertionError(f"output ended before {pattern!r}:\n{self.output}")
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if found := re.search(pattern, line):
                return found

    async def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def rest(self, seconds: float = STEP) -> int:
        """Read to the end; the exit status."""
        assert self.process.stdout is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), seconds)
        self.lines += rest.decode(errors="replace").splitlines()
        return await asyncio.wait_for(self.process.wait(), seconds)


@pytest.fixture
async def start_sandbox(tmp_path: Path) -> AsyncIterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for sandbox in started:  # a failed test must not leave a sandbox running
        if sandbox.process.returncode is None:
            sandbox.process.kill()
            await sandbox.process.wait()


async def launch(tmp_path: Path, started: list[Sandbox], *args: str) -> Sandbox:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "sandbox",
        *args,
        cwd=tmp_path,
        env=sandbox_env(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    sandbox = Sandbox(process)
    started.append(sandbox)
    return sandbox


async def test_once_walks_through_to_the_conversion_request_and_exits_0(
    tmp_path: Path, start_sandbox: list[Sandbox]
) -> None:
    sandbox = await launch(tmp_path, start_sandbox, "--once", "--port", "0")
    assert await sandbox.rest(START) == 0, sandbox.output
    out = sandbox.output
    steps = [out.index(f"[{n}/5]") for n in range(1, 6)]
    assert steps == sorted(steps), out
    # 1: the visit, with the click id and UTM in the page URL.
    visit = re.search(r"→ POST (http://127\.0\.0\.1:\d+)/api/v1/events/visit", out)
    assert visit, out
    assert f"fbclid={FBCLID}&utm_source=meta" in out
    # 2: the personal link, minted by the bot; 3: the join through it.
    link = re.search(r"← inviteLink (https://t\.me/\+\S+)", out)
    assert link, out
    assert '"chat_member": {' in out
    assert f'"invite_link": "{link.group(1)}"' in out
    assert re.search(r"The bridge stored update \d+, then confirmed it", out)
    # 4: the outbox row; 5: the exact request, key masked, fbc from the fbclid.
    assert re.search(r"outbox row #\d+: conversion \(Lead\), POST /api/v1/events/conversion", out)
    request = out[out.index("[5/5]") :]
    assert "POST /api/v1/events/conversion" in request
    assert "authorization: Bearer atk_live_abcd1234_****" in request
    assert re.search(r"idempotency-key: jb-conversion-\S+", request)
    assert re.search(rf'"fbc": "fb\.1\.\d{{13}}\.{FBCLID}"', request), request
    assert '"clientIp": "203.0.113.7"' in request
    assert '"channelId": "chn_sandbox"' in request
    assert re.search(r"outbox row #\d+: delivered", request)
    assert "✓ visit → invite link → join → conversion" in out
    # The key's secret part never shows, nor the simulator's bot token.
    assert FakeAdTarget.API_KEY not in out
    assert FakeAdTarget.API_KEY.rsplit("_", 1)[1] not in out
    assert "SANDBOX-not-a-real-token" not in out
    # The temporary database went with it.
    database = re.search(r"Database\s+(\S+) \(deleted at exit\)", out)
    assert database, out
    assert Path(database.group(1)).parent.parent == tmp_path
    assert not Path(database.group(1)).parent.exists()
    # Before the walkthrough: the onboarding message the bot sent the owner who made it
    # an admin, as Telegram shows it (no tags), with the snippet naming this tracker.
    onboarding = out[out.index("[setup]") : out.index("[1/5]")]
    assert "The bot's message to the owner (user 4242), as Telegram shows it:" in onboarding
    assert "│ ✅ Sandbox Channel is now tracked." in onboarding
    assert "│ Event reported for each join: Lead (/event to change)" in onboarding
    # The button's href is the channel's fallback link, so it works with the tracker down.
    assert re.search(r'href="https://t\.me/\+[\w-]+"', onboarding), onboarding
    assert f'data-tracker="{visit.group(1)}"' in onboarding
    assert "<b>" not in onboarding
    assert "&lt;" not in onboarding


async def test_interactive_serves_curl_joins_and_stats_until_ctrl_c(
    tmp_path: Path, start_sandbox: list[Sandbox]
) -> None:
    database = tmp_path / "kept" / "sandbox.db"
    sandbox = await launch(tmp_path, start_sandbox, "--port", "0", "--database", str(database))
    ready = await sandbox.read_until(r"Sandbox ready: tracker on (http://127\.0\.0\.1:\d+)", START)
    tracker = ready.group(1)
    commands = curl_commands(sandbox.output)
    visit = next(c for c in commands if c.url.endswith("/api/v1/events/visit"))
    invite = next(c for c in commands if c.url.endswith("/api/v1/events/invite"))
    assert visit.url.startswith(tracker + "/")
    assert invite.url.startswith(tracker + "/")

    async with httpx.AsyncClient(timeout=STEP, trust_env=False) as http:
        visited = await http.post(visit.url, content=visit.data, headers=visit.headers)
        assert visited.status_code == 200, visited.text
        invited = await http.post(invite.url, content=invite.data, headers=invite.headers)
        assert invited.status_code == 200, invited.text
    link = invited.json()["inviteLink"]
    assert link.startswith("https://t.me/+")

    await sandbox.type(f"join {link} 5550001")
    await sandbox.read_until(r"outbox row #\d+: delivered")
    assert re.search(r'"fbc": "fb\.1\.\d{13}\.IwAR_try_me"', sandbox.output)
    await sandbox.type("stats all")
    await sandbox.read_until(r"^/stats all \(what the admin sees in Telegram\):$")
    await sandbox.read_until(r"Top sources")
    stats = sandbox.output[sandbox.output.rindex("/stats all") :]
    assert "<" not in stats  # plain text, no HTML tags
    # The walkthrough's visitor and the one made with curl.
    assert figure(stats, "Visits") == 2
    assert figure(stats, "Joins") == 2
    assert figure(stats, "attributed") == 2
    assert figure(stats, "delivered") == 2
    assert figure(stats, "Still subscribed") == 2
    assert figure(stats, "to ad platform") == 2
    # A digit that int() refuses is a mistake named on one line, not the end of the sandbox.
    for typed in ("leave ²", f"join {link} ²"):
        await sandbox.type(typed)
        await sandbox.read_until(r"telegram-user-id: '²' is not a Telegram user id")

    sandbox.process.send_signal(signal.SIGINT)
    assert await sandbox.rest() == 0, sandbox.output
    assert "Stopping the sandbox." in sandbox.output
    assert database.exists()  # --database is the user's: kept
    # /stats's inline buttons, listed under its text, the period shown marked.
    stats = sandbox.output[sandbox.output.rindex("/stats all") :]
    buttons = r"^    \[ today \] \[ 7d \] \[ 30d \] \[ • all \]$"
    assert re.search(buttons, stats, re.MULTILINE), stats


async def test_chart_writes_the_admins_picture_to_a_file(
    tmp_path: Path, start_sandbox: list[Sandbox]
) -> None:
    sandbox = await launch(tmp_path, start_sandbox, "--port", "0")
    await sandbox.read_until(r"Sandbox ready: tracker on", START)
    await sandbox.type("chart 7d")  # /stats's period, not /chart's
    await sandbox.read_until(r"chart: expected `chart \[30d\|90d\] \[file\.png\]`")
    await sandbox.type("chart")  # the walkthrough's join is there to draw
    await sandbox.read_until(r"^/chart 30d: the picture the admin gets in Telegram")
    written = Path((await sandbox.read_until(r"^\s+(/\S+\.png)$")).group(1))
    assert written == tmp_path / "joinbridge-chart.png"
    await sandbox.read_until(r"Joins 1, through your links 100%")
    await sandbox.type("chart 90d pictures/ninety.png")
    await sandbox.read_until(r"chart: cannot write .*/pictures/ninety\.png")
    await sandbox.type("chart 90d ninety.png")
    await sandbox.read_until(r"^\s+/\S+/ninety\.png$")
    await sandbox.read_until(r"last 90 days")
    for path in (written, tmp_path / "ninety.png"):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (WIDTH_PX, HEIGHT_PX)
            colours = image.convert("RGB").getcolors(maxcolors=WIDTH_PX * HEIGHT_PX)
        assert colours is not None
        assert len(colours) > 10  # drawn, not a blank canvas
    sandbox.process.send_signal(signal.SIGINT)
    assert await sandbox.rest() == 0, sandbox.output
    assert (tmp_path / "joinbridge-chart.png").exists()  # the user's file outlives the sandbox


async def test_bad_arguments_name_the_argument(
    tmp_path: Path, start_sandbox: list[Sandbox]
) -> None:
    bad_port = await launch(tmp_path, start_sandbox, "--port", "70000")
    assert await bad_port.rest() == 2
    assert "argument --port: '70000' is not a port number" in bad_port.output
    folder = await launch(tmp_path, start_sandbox, "--database", str(tmp_path))
    assert await folder.rest() == 2
    assert f"--database: {tmp_path} is a directory" in folder.output
    assert "Traceback" not in bad_port.output + folder.output


class Curl:
    def __init__(self, command: str) -> None:
        words = shlex.split(command)
        assert words[0] == "curl", command
        self.url = next(w for w in words if w.startswith("http"))
        self.headers: dict[str, str] = {}
        self.data: str | None = None
        for flag, value in itertools.pairwise(words):
            if flag == "-H":
                name, _, header = value.partition(":")
                self.headers[name.strip()] = header.strip()
            elif flag == "-d":
                self.data = value


def curl_commands(output: str) -> list[Curl]:
    """The curl commands as printed, continuation lines joined, as a shell reads them."""
    text = re.sub(r"\\\n\s*", " ", output)
    return [Curl(line.strip()) for line in text.splitlines() if line.strip().startswith("curl ")]


def figure(text: str, label: str) -> int:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d,]+)$", text, re.MULTILINE)
    assert match, f"{label!r} not in {text!r}"
    return int(match.group(1).replace(",", ""))
