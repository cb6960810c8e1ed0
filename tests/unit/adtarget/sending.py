"""A write as the bridge makes it: the request model's call, posted as the courier
posts a stored outbox row, and its answer read by the documented answer model."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from bot.adtarget.client import AdTargetClient
from bot.adtarget.models import Call

M = TypeVar("M", bound=BaseModel)


async def send(client: AdTargetClient, call: Call, key: str, model: type[M]) -> M:
    answer = await client.post(call.path, call.body, idempotency_key=key, headers=call.headers)
    if not answer.ok:
        raise answer.error()
    return model.model_validate(answer.body)
