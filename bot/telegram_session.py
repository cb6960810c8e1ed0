"""aiogram's aiohttp session, keeping getUpdates' raw JSON for the inbox.

The poller stores each update as Telegram sent it before confirming it.
Serialising the parsed `Update` back to JSON cost about a tenth of ingest;
the session already holds the parsed JSON, so it hands that over instead.
orjson parses Bot API answers (a getUpdates batch of 100 is ~200 KB). Each
answer's model class is kept for the life of the process (see _RESPONSE_TYPES).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import ClientDecodeError
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import Response, TelegramType
from aiogram.types import Update
from pydantic import ValidationError

# aiogram builds `Response[method.__returning__]` on every call; build it once.
_UPDATES_RESPONSE = Response[list[Update]]
# pydantic caches a parametrised model only weakly, and these classes live in
# reference cycles: each garbage collection dropped `Response[ChatInviteLink]`,
# so the next link minted or revoked built the class again (~1 ms of the event
# loop, and a few hundred objects of garbage): 76 times in 300 lone joins at
# 50/s (bench/RESULTS.md, seventh session). Held here, each is built once.
_RESPONSE_TYPES: dict[Any, type[Response[Any]]] = {list[Update]: _UPDATES_RESPONSE}
# Raw batches are taken right after the call returns; more than a few pending
# means calls were abandoned (cancelled on shutdown) and theirs are dropped.
_KEEP_AT_MOST = 8


class UpdatesSession(AiohttpSession):
    def __init__(self, api: TelegramAPIServer) -> None:
        super().__init__(api=api, json_loads=orjson.loads)
        self._raw: dict[int, list[dict[str, Any]]] = {}

    def take_raw(self, method: GetUpdates) -> list[dict[str, Any]] | None:
        """The raw updates of the answer to `method`, once."""
        return self._raw.pop(id(method), None)

    def check_response(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        status_code: int,
        content: str,
    ) -> Response[TelegramType]:
        if isinstance(method, GetUpdates) and status_code == HTTPStatus.OK:
            try:
                data = orjson.loads(content)
            except orjson.JSONDecodeError as error:
                raise ClientDecodeError("Failed to decode object", error, content) from error
            if isinstance(data, dict) and data.get("ok") is True:
                try:
                    response = _UPDATES_RESPONSE.model_validate(data, context={"bot": bot})
                except ValidationError as error:
                    raise ClientDecodeError("Failed to deserialize object", error, data) from error
                if len(self._raw) >= _KEEP_AT_MOST:
                    self._raw.clear()
                self._raw[id(method)] = data["result"]
                return response  # type: ignore[return-value]
        returning = method.__returning__
        if returning not in _RESPONSE_TYPES:
            _RESPONSE_TYPES[returning] = Response[returning]  # type: ignore[valid-type]
        return super().check_response(bot, method, status_code, content)


def raw_json(raw: dict[str, Any]) -> str:
    return orjson.dumps(raw).decode()
