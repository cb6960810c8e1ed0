"""The AdTarget HTTP client: one long-lived httpx.AsyncClient, no retry policy.

Retrying and what to do about an answer belong to the courier; this module
only speaks the wire protocol (auth header, Idempotency-Key, error envelope).

Every write goes one way: built as a request model's `Call`
(bot/adtarget/models.py), stored in the outbox, sent with `post`, and its raw
`ApiAnswer` turned into a verdict by the courier (`ApiAnswer.error()`). The
reads an admin waits for (`get_lead`, `list_channels`) return the answer
models and raise the errors of bot/adtarget/errors.py. Both classify an answer
the same way, through `errors.error_class`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from bot.adtarget.errors import (
    AdTargetError,
    UnexpectedAnswer,
    Unreachable,
    Unsendable,
    envelope,
    error_from_answer,
    header_problem,
)
from bot.adtarget.models import (
    ChannelList,
    Lead,
    RemoteChannel,
)
from bot.adtarget.wire import API_PREFIX, CHANNELS_PATH, lead_path
from bot.token_bucket import TokenBucket

_Model = TypeVar("_Model", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: Any  # parsed JSON, or None when the answer was not JSON
    retry_after: float | None
    replay: bool

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str | None:
        return envelope(self.body)[0]

    @property
    def error_message(self) -> str:
        return envelope(self.body)[1]

    def describe(self) -> str:
        """`HTTP 404 CHANNEL_NOT_FOUND: channel is not assigned`, for logs and reasons."""
        text = f"HTTP {self.status}"
        if self.error_code:
            text += f" {self.error_code}"
        if self.error_message:
            text += f": {self.error_message}"
        return text

    def error(self) -> AdTargetError:
        """This (non-2xx) answer as a typed error."""
        return error_from_answer(self.status, self.body, self.retry_after)


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date; AdTarget documents seconds, treat as absent
    return max(seconds, 0.0)


class AdTargetClient:
    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        timeout: float = 10.0,
        pacer: TokenBucket | None = None,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        on_answer: Callable[[str, float], None] = lambda status, seconds: None,
    ) -> None:
        # Every request takes a token: AdTarget's limit is per key, whatever the call.
        self.pacer = pacer or TokenBucket(300 / 60.0, 50)
        self.timeout = timeout
        # Told each request's HTTP status ("error" when no answer came) and its
        # duration in seconds, pacing wait excluded (the bridge's /metrics).
        self._on_answer = on_answer
        self._api = base_url.rstrip("/") + API_PREFIX
        # Parsed once per path: httpx parses and merges a str URL on every request.
        self._post_urls: dict[str, httpx.URL] = {}
        self._http = httpx.AsyncClient(
            base_url=self._api,
            headers={
                "Authorization": f"Bearer {api_key.get_secret_value()}",
                "User-Agent": "joinbridge/0.1",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            # Sized to the courier's concurrency: httpcore checks every pooled
            # connection (a readability syscall each) on every request, so idle
            # spare connections cost CPU on each send.
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        headers: dict[str, str] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> ApiAnswer:
        """POST `path` (relative to /api/v1). Transport errors propagate;
        `Unsendable` when the request cannot be built, before any pacing token
        is taken (this is the one place a stored request becomes HTTP).

        `on_sent` is called once the request is written out (through httpcore's
        `trace` extension), and again, harmlessly, when the call ends."""
        request_headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            **(headers or {}),
        }
        extensions: dict[str, Any] | None = None
        if on_sent is not None:
            sent = on_sent

            async def trace(event: str, info: dict[str, Any]) -> None:
                if event == "http11.send_request_body.complete":
                    sent()

            extensions = {"trace": trace}
        try:
            request = self._build_post(path, body, request_headers, extensions)
            await self.pacer.acquire()
            return await self._timed(self._http.send(request))
        finally:
            if on_sent is not None:
                on_sent()

    def _build_post(
        self,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        extensions: dict[str, Any] | None,
    ) -> httpx.Request:
        # What a row brings is checked; the client's own headers (the key) are
        # the same for every row, so a fault there is no row's to be parked for.
        try:
            for name, value in headers.items():
                if problem := header_problem(value):
                    raise Unsendable(f"header {name}: {problem}")
            return self._http.build_request(
                "POST",
                self._post_url(path),
                content=json.dumps(body, separators=(",", ":")),
                headers=headers,
                extensions=extensions,
            )
        except Unsendable:
            raise
        except Exception as error:
            raise Unsendable(f"{type(error).__name__}: {error}") from error

    def _post_url(self, path: str) -> httpx.URL:
        url = self._post_urls.get(path)
        if url is None:
            if len(self._post_urls) >= 64:  # follow-up paths carry a user id
                self._post_urls.clear()
            url = self._post_urls[path] = httpx.URL(self._api + "/" + path.lstrip("/"))
        return url

    async def get(self, path: str) -> ApiAnswer:
        await self.pacer.acquire()
        return await self._timed(self._http.get(path))

    async def _timed(self, request: Awaitable[httpx.Response]) -> ApiAnswer:
        started = time.perf_counter()
        try:
            response = await request
        except httpx.HTTPError:
            self._on_answer("error", time.perf_counter() - started)
            raise
        self._on_answer(str(response.status_code), time.perf_counter() - started)
        answer = _answer(response)
        # httpx binds a response's stream to the response itself, a reference
        # cycle that leaves every answer (~45 objects: headers, request, the
        # connection's stream) to the garbage collector. The body is read, so the
        # spent stream can go and reference counting frees the answer at once.
        response.stream = httpx.ByteStream(b"")
        return answer

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- typed reads: direct, bounded in time ----

    async def get_lead(self, telegram_user_id: int) -> Lead:
        """What AdTarget holds for this user; LeadNotFound when nothing."""
        return await self._read(lead_path(telegram_user_id), Lead)

    async def list_channels(self) -> list[RemoteChannel]:
        """The site's active channels."""
        return (await self._read(CHANNELS_PATH, ChannelList)).channels

    async def _read(self, path: str, model: type[_Model]) -> _Model:
        # The deadline covers the wait for a pacing token too: a reader (an
        # admin, a script) gets an answer or a clear error, never an open wait.
        try:
            async with asyncio.timeout(self.timeout * 2):
                answer = await self.get(path)
        except TimeoutError:
            raise Unreachable(
                "unreachable", f"no answer within {self.timeout * 2:g} s", status=0
            ) from None
        except httpx.HTTPError as error:
            raise _unreachable(error) from error
        return _parsed(answer, model)


def _unreachable(error: httpx.HTTPError) -> Unreachable:
    if isinstance(error, httpx.TimeoutException):
        return Unreachable("unreachable", f"timed out ({type(error).__name__})", status=0)
    return Unreachable("unreachable", f"{type(error).__name__}: {error}", status=0)


def _parsed(answer: ApiAnswer, model: type[_Model]) -> _Model:
    if not answer.ok:
        raise answer.error()
    try:
        return model.model_validate(answer.body)
    except ValidationError as error:
        raise UnexpectedAnswer(
            "",
            f"the answer is not the documented {model.__name__}: "
            f"{error.error_count()} problem(s), first: {error.errors()[0]['msg']}",
            status=answer.status,
        ) from None


def _answer(response: httpx.Response) -> ApiAnswer:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return ApiAnswer(
        status=response.status_code,
        body=body,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        replay=response.headers.get("X-Idempotent-Replay", "").lower() == "true",
    )
