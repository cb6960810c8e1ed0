"""`joinbridge sandbox`: the pieces shared by the walkthrough and the console.

The sandbox runs the real bridge (`bot.app.run_bridge`) against the built-in
simulators of Telegram and AdTarget (bot/simulators/), in one process, with
settings built here: no token, no `.env`, no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bot.app import Bridge
from bot.settings import Settings
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import Call, FakeTelegram

# Shaped like a real token (aiogram checks the shape); the simulator accepts only it.
SANDBOX_TOKEN = "123456:SANDBOX-not-a-real-token"  # noqa: S105 - a simulator's token
CHANNEL_ID = -1001234567890
CHANNEL_TITLE = "Sandbox Channel"
ADTARGET_CHANNEL_ID = "chn_sandbox"
# The bridge's admin (ADMIN_IDS) and the channel's owner: makes the bot an admin of
# the channel, so gets its onboarding message, and asks for /stats.
OWNER_ID = 4242
FIRST_VISITOR_ID = 777000001
# Generous: the machine may be busy; every wait ends as soon as its condition holds.
WAIT = 30.0

T = TypeVar("T")


class SandboxSettings(Settings):
    """Settings from code only: the sandbox never reads `.env` or the environment."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def sandbox_settings(
    telegram: FakeTelegram, adtarget: FakeAdTarget, database: Path, port: int, log_level: str
) -> Settings:
    return SandboxSettings(
        bot_token=SANDBOX_TOKEN,
        telegram_api_url=telegram.url,
        adtarget_api_key=adtarget.api_key,
        adtarget_api_url=adtarget.url,
        database_path=database,
        admin_ids=(OWNER_ID,),
        tracker_host="127.0.0.1",
        tracker_port=port,
        # A few links are plenty here, and minting them stays quick at start.
        invite_pool_size=3,
        log_level=log_level,
    )


def simulators() -> tuple[FakeTelegram, FakeAdTarget]:
    """The two simulators, not started: a private channel, and AdTarget knowing it."""
    telegram = FakeTelegram(token=SANDBOX_TOKEN, bot_username="joinbridge_sandbox_bot")
    telegram.add_channel(CHANNEL_ID, CHANNEL_TITLE)
    adtarget = FakeAdTarget(
        channels=[
            {
                "channelId": ADTARGET_CHANNEL_ID,
                "telegramChannelId": str(CHANNEL_ID),
                "title": CHANNEL_TITLE,
                "funnelOrder": 1,
            }
        ]
    )
    return telegram, adtarget


class StepFailed(Exception):
    """A walkthrough step did not happen; str() says which and why."""


@dataclass
class Sandbox:
    """A running sandbox: the bridge and the simulators it talks to."""

    telegram: FakeTelegram
    adtarget: FakeAdTarget
    bridge: Bridge
    _next_user: int = field(default=FIRST_VISITOR_ID)

    @property
    def tracker_url(self) -> str:
        return self.bridge.tracker_url

    def new_user_id(self) -> int:
        user_id = self._next_user
        self._next_user += 1
        return user_id


def say(text: str = "") -> None:
    # Flushed at once: whoever reads the sandbox through a pipe sees each step as it happens.
    print(text, flush=True)


def block(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def pretty_json(value: Any, width: int = 84) -> str:
    """JSON with one key per line, but objects that fit in `width` kept on one line."""
    return _render(value, 0, 0, width)


def _render(value: Any, indent: int, used: int, width: int) -> str:
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, dict | list) or not value or indent + used + len(flat) <= width:
        return flat
    inner = " " * (indent + 2)
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            head = json.dumps(key, ensure_ascii=False) + ": "
            lines.append(inner + head + _render(item, indent + 2, len(head), width))
        return "{\n" + ",\n".join(lines) + "\n" + " " * indent + "}"
    lines = [inner + _render(item, indent + 2, 0, width) for item in value]
    return "[\n" + ",\n".join(lines) + "\n" + " " * indent + "]"


_KEY_PREFIX = re.compile(r"atk_[a-z]+_[A-Za-z0-9]+_")


def mask_key(value: str) -> str:
    """An API key (or `Bearer <key>`) with its secret part hidden: only the public
    prefix AdTarget shows in its dashboard is kept."""
    scheme, _, key = value.rpartition(" ")
    prefix = _KEY_PREFIX.match(key)
    shown = prefix.group(0) if prefix else key[:4]
    return f"{scheme} {shown}****" if scheme else f"{shown}****"


def plain_text(message_html: str) -> str:
    """A Telegram HTML message as the app shows it, without the tags."""
    return html.unescape(re.sub(r"<[^>]+>", "", message_html))


def as_seen(message: Call) -> str:
    """A message the bot sent (a sendMessage call), as the Telegram app shows it: the
    text without its tags, then its inline buttons, a line per row."""
    markup = message.params.get("reply_markup")
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    lines = [plain_text(message.raw.get("text", ""))]
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, list) and row:
            lines.append(" ".join(f"[ {button.get('text', '')} ]" for button in row))
    return "\n".join(lines)


async def until(probe: Callable[[], Awaitable[T | None]], what: str, seconds: float = WAIT) -> T:
    """Poll `probe` until it returns something; StepFailed naming `what` otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise StepFailed(f"{what}: not seen within {seconds:.0f} s")
        await asyncio.sleep(0.05)


async def until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None when `stop` is set first (the work is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
