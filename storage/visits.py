"""Visits: a landing-page visitor's attribution, one row per tempId."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

from storage.db import Row, Transaction
from storage.sql import marks


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a landing page knows of a visitor. Empty strings count as absent."""

    temp_id: str
    client_session_id: str | None = None
    external_user_id: str | None = None
    href: str | None = None
    referrer: str | None = None
    fbc: str | None = None
    fbp: str | None = None
    gclid: str | None = None
    ttclid: str | None = None
    sccid: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_content: str | None = None
    utm_term: str | None = None


ATTRIBUTION_COLUMNS = tuple(f.name for f in fields(Attribution))
_UPDATABLE = ATTRIBUTION_COLUMNS[1:]


def _attribution(row: Row) -> Attribution:
    """From a row of `id` then ATTRIBUTION_COLUMNS, in that order (_SELECT_BY_ID)."""
    return Attribution(*row[1:])


def _upsert_sql(returning: str = "") -> str:
    columns = ", ".join(ATTRIBUTION_COLUMNS)
    updates = ", ".join(f"{c} = coalesce(nullif(excluded.{c}, ''), visits.{c})" for c in _UPDATABLE)
    return (
        f"INSERT INTO visits ({columns}, created_at, updated_at)"
        f" VALUES ({marks(len(ATTRIBUTION_COLUMNS) + 2)})"
        # A returning visitor's row is fresh again: due for scrubbing only after
        # RETENTION_DAYS from now (storage/privacy.py).
        f" ON CONFLICT (temp_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at,"
        f" scrubbed_at = NULL"
        f"{returning}"
    )


_UPSERT = _upsert_sql()
_UPSERT_RETURNING = _upsert_sql(" RETURNING id")


def _params(visit: Attribution, now: float) -> tuple[object, ...]:
    values = asdict(visit)
    return (*(values[c] or None for c in ATTRIBUTION_COLUMNS), now, now)


async def upsert(tx: Transaction, visit: Attribution) -> int:
    """Store a visit; a repeat visit keeps old values where the new ones are empty."""
    row = await tx.fetchone(_UPSERT_RETURNING, _params(visit, time.time()))
    assert row is not None
    return int(row[0])


async def upsert_many(tx: Transaction, batch: list[Attribution]) -> None:
    """`upsert` for many visits in one statement, applied in order."""
    now = time.time()
    await tx.executemany(_UPSERT, [_params(visit, now) for visit in batch])


_SELECT_BY_ID = f"SELECT id, {', '.join(ATTRIBUTION_COLUMNS)} FROM visits WHERE id"


async def get_by_id(tx: Transaction, visit_id: int) -> Attribution | None:
    row = await tx.fetchone(f"{_SELECT_BY_ID} = ?", (visit_id,))
    return _attribution(row) if row else None


async def ensure(tx: Transaction, visit: Attribution) -> int:
    """The visit's id; a visitor never seen is stored from what this request carries,
    a known one is left as its own visit calls made it."""
    row = await tx.fetchone("SELECT id FROM visits WHERE temp_id = ?", (visit.temp_id,))
    if row:
        return int(row[0])
    return await upsert(tx, visit)


async def set_fbp(tx: Transaction, temp_id: str, fbp: str) -> bool:
    changed = await tx.execute(
        "UPDATE visits SET fbp = ?, updated_at = ?, scrubbed_at = NULL WHERE temp_id = ?",
        (fbp, time.time(), temp_id),
    )
    return changed > 0
