"""A simulated Telegram Bot API server that aiogram's AiohttpSession can talk to over HTTP.

Point a bot at it with ``AiohttpSession(api=TelegramAPIServer.from_base(fake.url))``.
It follows /work/shared/telegram-notes.md: allowed_updates filters when an update is
queued, offsets confirm, chat_member needs the bot to be an admin, other admins'
invite links come back masked, and errors carry the HTTP status of their error_code.
Tests can also make it send what older or newer servers send, which aiogram may
reject (omit_fields, extra_fields, allow_unknown_status, enqueue_raw).
The world it simulates is in telegram_state.py, the Bot API methods in
telegram_methods.py; this module is the server, its observation and its faults.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from bot.simulators.telegram_methods import METHODS, BotApiMethods
from bot.simulators.telegram_models import ApiError, Call, read_params

__all__ = ["ApiError", "Call", "FakeTelegram"]

UPLOAD_LIMIT = 50 * 2**20


class FakeTelegram(BotApiMethods):
    def __init__(
        self,
        token: str = "123456:TEST-fake-token",  # noqa: S107 - a fake token, by design
        bot_id: int = 123456,
        bot_username: str = "joinbridge_test_bot",
        *,
        emit_member_update_on_approve: bool = True,
    ) -> None:
        super().__init__(
            bot_id, bot_username, emit_member_update_on_approve=emit_member_update_on_approve
        )
        self.token = token
        self.calls: list[Call] = []
        self._faults: dict[str, deque[ApiError]] = {}
        self._limits: dict[str, int] = {}
        self._hits: dict[str, deque[float]] = {}
        self._reject = False
        self._runner: web.AppRunner | None = None
        self._port = 0
        handlers: dict[str, Callable[[Call], Awaitable[Any]]] = {
            name: getattr(self, "_api_" + name) for name in METHODS
        }
        # Telegram matches method names case-insensitively.
        self._handlers = {name.lower(): (name, fn) for name, fn in handlers.items()}

    # ---- server lifecycle -------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        # Uploads (sendPhoto) up to the Bot API's 50 MB, not aiohttp's default 1 MB.
        app = web.Application(client_max_size=UPLOAD_LIMIT)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        # A short shutdown timeout: stop() already wakes every long poll.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # ---- observation ------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - the tests' agreed waiting API
    ) -> Call:
        """The earliest recorded call that matches, waiting for one if there is none yet."""

        def find() -> Call | None:
            return next(
                (c for c in self.calls_to(method) if predicate is None or predicate(c)), None
            )

        if not await self._wait_until(lambda: find() is not None, timeout):
            raise TimeoutError(f"no matching {method} call within {timeout}s")
        found = find()
        assert found is not None
        return found

    async def wait_confirmed(
        self,
        update_id: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - the tests' agreed waiting API
    ) -> None:
        if not await self._wait_until(lambda: self.confirmed_offset > update_id, timeout):
            raise TimeoutError(f"update {update_id} not confirmed within {timeout}s")

    # ---- faults -----------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error_code: int,
        description: str,
        *,
        retry_after: int | None = None,
        count: int = 1,
    ) -> None:
        queue = self._faults.setdefault(method.lower(), deque())
        queue.extend(ApiError(error_code, description, retry_after) for _ in range(count))

    def clear_faults(self) -> None:
        """Forget faults queued by fail_next and limits set by limit_method."""
        self._faults.clear()
        self._limits.clear()

    def limit_method(self, method: str, per_minute: int) -> None:
        self._limits[method.lower()] = per_minute

    def reject_token(self, reject: bool = True) -> None:
        self._reject = reject

    def _check_faults(self, method: str) -> None:
        key = method.lower()
        if queue := self._faults.get(key):
            raise queue.popleft()
        if (limit := self._limits.get(key)) is not None:
            now = time.monotonic()
            hits = self._hits.setdefault(key, deque())
            while hits and now - hits[0] >= 60:
                hits.popleft()
            if len(hits) >= limit:
                oldest = hits[0] if hits else now  # per_minute=0 blocks every call
                wait = max(1, math.ceil(60 - (now - oldest)))
                raise ApiError(429, f"Too Many Requests: retry after {wait}", wait)
            hits.append(now)

    # ---- HTTP entry -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return ApiError(401, "Unauthorized").response()
        params, raw, files = await read_params(request)
        name = request.match_info["method"]
        entry = self._handlers.get(name.lower())
        call = Call(entry[0] if entry else name, params, time.monotonic(), raw, files)
        self.calls.append(call)
        self._notify()
        try:
            if self._reject:
                raise ApiError(401, "Unauthorized")
            if entry is None:
                raise ApiError(404, "Not Found: method not found")
            self._check_faults(call.method)
            result = await entry[1](call)
        except ApiError as error:
            return error.response()
        except (ValueError, TypeError) as error:
            # Malformed parameters (e.g. offset="abc"): Telegram answers 400, not 500.
            return ApiError(400, f"Bad Request: {error}").response()
        # orjson: a batch of 100 updates is ~200 KB of JSON, and the real Telegram's
        # cost of answering does not belong in the bridge's ingest figure.
        return web.Response(
            body=orjson.dumps({"ok": True, "result": result}), content_type="application/json"
        )
