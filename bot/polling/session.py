"""aiogram's aiohttp session, reading getUpdates answers update by update.

aiogram would validate a getUpdates answer as one list, and a single update it
cannot read would fail the whole answer again and again (bot/polling/reader.py).
This session takes the answer's JSON itself and has the `UpdateReader` read it:
the call returns the updates that could be read, and the poller takes the whole
`ReadBatch` (every raw update, the unreadable ones with their errors, and the
highest update_id) to store each update as Telegram sent it before confirming
it. Serialising the parsed `Update` back to JSON cost about a tenth of ingest;
the raw JSON is at hand, so it is stored instead. orjson parses Bot API answers
(a getUpdates batch of 100 is ~200 KB). Each answer's model class is kept for
the life of the process (see _RESPONSE_TYPES).
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

from bot.polling.reader import ReadBatch, UpdateReader

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
    def __init__(self, api: TelegramAPIServer, reader: UpdateReader | None = None) -> None:
        super().__init__(api=api, json_loads=orjson.loads)
        self.reader = reader or UpdateReader()
        self._read: dict[int, ReadBatch] = {}

    def take_read(self, method: GetUpdates) -> ReadBatch | None:
        """The answer to `method` as the reader read it, once."""
        return self._read.pop(id(method), None)

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
            if (
                isinstance(data, dict)
                and data.get("ok") is True
                and isinstance(data.get("result"), list)
            ):
                read = self.reader.read_batch(data["result"], bot)
                if len(self._read) >= _KEEP_AT_MOST:
                    self._read.clear()
                self._read[id(method)] = read
                # Built from updates already validated: nothing is checked twice.
                return _UPDATES_RESPONSE.model_construct(ok=True, result=read.updates)  # type: ignore[return-value]
        returning = method.__returning__
        if returning not in _RESPONSE_TYPES:
            _RESPONSE_TYPES[returning] = Response[returning]  # type: ignore[valid-type]
        return super().check_response(bot, method, status_code, content)


def raw_json(raw: dict[str, Any]) -> str:
    return orjson.dumps(raw).decode()
