"""Past AdTarget's idempotency window a resend could record a conversion twice,
so the courier first asks AdTarget for the person's lead (GET /leads/{id}) and
looks for the row's conversion there."""

from __future__ import annotations

import logging
import time

from bot.adtarget.client import AdTargetClient
from bot.adtarget.wire import lead_path
from bot.courier.verdicts import CHECKABLE_KINDS, find_matching_conversion
from bot.logs import ids
from storage.outbox import OutboxRow

log = logging.getLogger("bot.courier.service")  # the courier's lines, under its logger as before


def row_ids(row: OutboxRow) -> dict[str, int | str]:
    """The ids a log line about an outbox row carries as fields (LOG_FORMAT=json)."""
    return ids(outbox_id=row.id, chat_id=row.chat_id, user_id=row.telegram_user_id)


async def delivered_earlier(
    client: AdTargetClient, row: OutboxRow, *, idempotency_window: float
) -> str | None:
    """The id of the conversion AdTarget already holds for `row`, or None: send it.

    Only asked for a row resent past the window; any doubt (an error, an
    unexpected answer) means None, since an idempotent resend is the safe side."""
    if row.kind not in CHECKABLE_KINDS or row.first_attempt_at is None or row.attempts <= 1:
        return None
    if time.time() - row.first_attempt_at < idempotency_window:
        return None
    if row.telegram_user_id is None:
        return None
    try:
        answer = await client.get(lead_path(row.telegram_user_id))
    except Exception as error:
        log.warning(
            "outbox row %d: lead check failed (%s); sending", row.id, error, extra=row_ids(row)
        )
        return None
    if answer.status != 200 or not isinstance(answer.body, dict):
        return None
    match = find_matching_conversion(answer.body, row)
    if match is not None:
        log.info(
            "outbox row %d: AdTarget already holds conversion %s; not sending again",
            row.id,
            match,
            extra={**row_ids(row), **ids(conversion_id=match)},
        )
    return match
