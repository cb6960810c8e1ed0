"""The AdTarget HTTP client: one long-lived httpx.AsyncClient, no retry policy.

Retrying, pacing and classification belong to the courier; this module only
speaks the wire protocol (auth header, Idempotency-Key, error envelope).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from bot.pacing import TokenBucket

API_PREFIX = "/api/v1"


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: Any  # parsed JSON, or None when the answer was not JSON
    retry_after: float | None
    replay: bool

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return str(code) if code is not None else None
        return None

    @property
    def error_message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message", ""))
        return ""

    def describe(self) -> str:
        """`HTTP 404 CHANNEL_NOT_FOUND: channel is not assigned`, for logs and reasons."""
        text = f"HTTP {self.status}"
        if self.error_code:
            text += f" {self.error_code}"
        if self.error_message:
            text += f": {self.error_message}"
        return text


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # Every request takes a token: AdTarget's limit is per key, whatever the call.
        self.pacer = pacer or TokenBucket(300 / 60.0, 50)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + API_PREFIX,
            headers={
                "Authorization": f"Bearer {api_key.get_secret_value()}",
                "User-Agent": "joinbridge/0.1",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            transport=transport,
        )

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        headers: dict[str, str] | None = None,
    ) -> ApiAnswer:
        """POST `path` (relative to /api/v1). Transport errors propagate."""
        await self.pacer.acquire()
        request_headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            **(headers or {}),
        }
        response = await self._http.post(
            path, content=json.dumps(body, separators=(",", ":")), headers=request_headers
        )
        return _answer(response)

    async def get(self, path: str) -> ApiAnswer:
        await self.pacer.acquire()
        return _answer(await self._http.get(path))

    async def aclose(self) -> None:
        await self._http.aclose()


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
