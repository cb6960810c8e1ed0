"""Running the real bridge against the loopback fakes, in-process or as `python -m bot`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.app import Bridge, run_bridge
from bot.settings import Settings
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage.db import Database, Transaction
from storage.visits import Attribution

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
CHANNEL_ID = -1001234567890
CHANNEL_TITLE = "Test Channel"
OWNER = 4242  # in ADMIN_IDS of the admin tests' bridges
# Real getUpdates payloads (tests/payloads/README.md says where each comes from).
PAYLOADS = sorted((ROOT / "tests" / "payloads").glob("*.json"))

# The store every bridge of the running test uses: {} for the SQLite file at
# DATABASE_PATH, {"database_url": …} when the suite runs on PostgreSQL
# (`pytest --engine postgres`; tests/conftest.py fills it per test).
ENGINE: dict[str, str] = {}

# Short intervals so recovery paths run in tests in well under a second.
FAST: dict[str, Any] = {
    "poll_timeout": 1,
    "backoff_base": 0.05,
    "backoff_cap": 0.3,
    "update_retry_base": 0.2,
    "auth_probe_interval": 0.3,
    "billing_probe_interval": 0.3,
    "adtarget_timeout": 1.0,
    "shutdown_grace": 1.0,
    "tracker_port": 0,
    "invite_pool_size": 3,
}


def bridge_env(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, **overrides: Any
) -> dict[str, str]:
    """The settings as environment variables, as an operator would give them."""
    values: dict[str, Any] = {
        "bot_token": telegram.token,
        "telegram_api_url": telegram.url,
        "adtarget_api_key": FakeAdTarget.API_KEY,
        "adtarget_api_url": adtarget.url,
        "database_path": str(tmp_path / "bridge.db"),
        **FAST,
        **ENGINE,
        **overrides,
    }
    return {key.upper(): str(value) for key, value in values.items()}


def bridge_settings(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, **overrides: Any
) -> Settings:
    env = bridge_env(tmp_path, telegram, adtarget, **overrides)
    return Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})


# The `start_bridge` fixture: starts a tracked bridge with the given settings.
StartBridge = Callable[..., Awaitable["RunningBridge"]]


async def start_tracked(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, **overrides: Any
) -> RunningBridge:
    """A bridge started with `overrides`, the test channel tracked."""
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, **overrides))
    await running.start()
    await running.track_channel(telegram)
    return running


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)


class RunningBridge:
    """The bridge's own entry (`run_bridge`), started as a task in the test's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self._ready: asyncio.Future[Bridge] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[int] | None = None

    async def start(self) -> Bridge:
        self.task = asyncio.create_task(
            run_bridge(self.settings, self.stop_event, on_ready=self._ready.set_result)
        )
        done, _ = await asyncio.wait(
            {self._ready, self.task}, timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        if self.task in done:
            raise RuntimeError(f"bridge ended at start with status {self.task.result()}")
        return self._ready.result()

    @property
    def bridge(self) -> Bridge:
        return self._ready.result()

    async def stop(self, timeout: float = 10.0) -> int:
        assert self.task is not None
        self.stop_event.set()
        return await asyncio.wait_for(self.task, timeout)

    async def track_channel(self, telegram: FakeTelegram, chat_id: int = CHANNEL_ID) -> None:
        """Promote the bot in the fake, as an owner would, and wait for the bridge to see it."""
        telegram.bot_status_change(chat_id, "administrator")
        await eventually(lambda: self._channel_active(chat_id), what=f"channel {chat_id} tracked")

    async def _channel_active(self, chat_id: int) -> bool:
        row = await self.bridge.db.fetchone(
            "SELECT active FROM channels WHERE chat_id = ?", (chat_id,)
        )
        return bool(row and row[0])

    async def mint(self, temp_id: str, chat_id: int = CHANNEL_ID, **attribution: Any) -> str:
        link = await self.bridge.minter.mint_for_visitor(
            chat_id, Attribution(temp_id=temp_id, **attribution)
        )
        return link.url

    async def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = await self.bridge.db.fetchone(sql, params)
        return None if row is None else row[0]

    async def wait_scalar(
        self, sql: str, expected: Any, params: tuple[Any, ...] = (), timeout: float = 10.0
    ) -> None:
        async def matches() -> bool:
            return bool(await self.scalar(sql, params) == expected)

        await eventually(matches, timeout=timeout, what=f"{sql} == {expected!r}")


class BridgeProcess:
    """`python -m bot` in a child process, logs to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, module: str = "bot") -> None:
        self.env = env
        self.log_path = log_path
        self.module = module  # benchmarks also run bench.naive_bot this way
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(self.log_path.parent)),
            "PYTHONPATH": str(ROOT),
            **self.env,
        }
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                cwd=self.log_path.parent,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (Linux VmHWM)."""
        assert self.proc is not None
        return _status_kb(self.proc.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        assert self.proc is not None
        return _status_kb(self.proc.pid, "VmRSS") / 1024

    async def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def sent_to(telegram: FakeTelegram, chat_id: int) -> list[str]:
    """The texts the bot sent to `chat_id`, oldest first."""
    return [m.get("text", "") for m in telegram.sent_messages if m["chat"]["id"] == chat_id]


async def ask(telegram: FakeTelegram, user_id: int, text: str) -> str:
    """Send a private message to the bot; return its answer."""
    before = len(telegram.sent_messages)
    telegram.message(user_id, user_id, text)
    await eventually(
        lambda: any(m["chat"]["id"] == user_id for m in telegram.sent_messages[before:]),
        what=f"answer to {text!r}",
    )
    return next(
        str(m.get("text", ""))
        for m in telegram.sent_messages[before:]
        if m["chat"]["id"] == user_id
    )


def load_payload(path: Path) -> dict[str, Any]:
    """A fresh copy of one captured update, for the test to retarget."""
    update: dict[str, Any] = json.loads(path.read_text())
    return update


async def write(db: Database, work: Callable[[Transaction], Awaitable[T]]) -> T:
    """`work(tx)` in a transaction of its own: a storage `…_in` step run alone."""
    async with db.transaction() as tx:
        return await work(tx)


async def mint_links(
    tmp_path: Path,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    count: int,
    **overrides: Any,
) -> list[str]:
    """Track the channel and mint `count` links with an in-process bridge on the
    store the settings name, then stop it: the setting for bridge processes."""
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget, **overrides))
    await running.start()
    try:
        await running.track_channel(telegram)
        return [
            await running.mint(f"00000000-0000-4000-8000-{i:012d}", fbc=f"fb.1.1.{i}")
            for i in range(count)
        ]
    finally:
        assert await running.stop() == 0
