"""Personal data: clearing it after RETENTION_DAYS (scrubbing), and erasing one
person on request (forgetting).

Scrubbing keeps every row, so /stats counts stay the same; it clears the
fields that identify a visitor (IP, User-Agent, click ids, page URLs, their
external id) from visits and from outbox rows that are done (delivered or
parked). Rows still to be sent keep theirs: AdTarget needs them. `scrubbed_at`
marks what is done, and the partial indexes of migration 007 hold only rows not
yet scrubbed, so an hourly sweep reads only what it has to change.

Forgetting deletes a Telegram user's joins, leaves, join requests, outbox rows
(in any state: a conversion not yet sent must never be sent afterwards), the
visits behind their joins' links, their stored raw updates, and their rows in
any other table that names them, in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from storage.db import Database, Transaction
from storage.dialect import Dialect
from storage.sql import marks

# Visit columns that identify a person. temp_id stays: it is the row's key and
# only a random cookie value; utm_* stay: they describe the ad, not the visitor.
VISIT_PERSONAL = (
    "client_session_id",
    "external_user_id",
    "href",  # query strings carry click ids and whatever else the page passed
    "referrer",
    "fbc",
    "fbp",
    "gclid",
    "ttclid",
    "sccid",
    "client_ip",
    "user_agent",
)
# The same facts as AdTarget body fields (conversions, visit forwards, update-fbp,
# follow-up events).
BODY_PERSONAL = (
    "clientIp",
    "userAgent",
    "fbc",
    "fbp",
    "gclid",
    "ttclid",
    "sccid",
    "eventSourceUrl",
    "externalUserId",
    "clientSessionId",
    "href",
    "landingPage",
    "referrer",
    "country",
    "city",
    "region",
    "pii",
)
HEADER_PERSONAL = (
    "X-Adtarget-Client-IP",
    "X-Adtarget-Client-User-Agent",
    "x-adtarget-client-ip",
    "x-adtarget-client-user-agent",
)

# Where a raw update names the person it is about (or who sent it).
_UPDATE_USER_PATHS = (
    ("chat_member", "new_chat_member", "user", "id"),
    ("chat_member", "old_chat_member", "user", "id"),
    ("chat_member", "from", "id"),
    ("chat_join_request", "from", "id"),
    ("my_chat_member", "from", "id"),
    ("message", "from", "id"),
    ("callback_query", "from", "id"),
)
# Columns that hold a Telegram user id, in tables this module does not know by name.
_USER_COLUMNS = ("user_id", "telegram_user_id")
_HANDLED = {"joins", "leaves", "join_requests", "outbox", "visits", "invite_links", "updates"}


_SCRUB_VISITS = (
    "UPDATE visits SET "
    + ", ".join(f"{c} = NULL" for c in VISIT_PERSONAL)
    + ", scrubbed_at = ? WHERE id IN (SELECT id FROM visits INDEXED BY visits_to_scrub"
    " WHERE scrubbed_at IS NULL AND updated_at < ? LIMIT ?)"
)


def _scrub_outbox(dialect: Dialect) -> str:
    return (
        f"UPDATE outbox SET body = {dialect.json_without('body', BODY_PERSONAL)},"
        f" headers = nullif({dialect.json_without('headers', HEADER_PERSONAL)}, '{{}}'),"
        " scrubbed_at = ? WHERE id IN (SELECT id FROM outbox INDEXED BY outbox_to_scrub"
        " WHERE scrubbed_at IS NULL AND state IN ('delivered', 'parked') AND created_at < ?"
        " LIMIT ?)"
    )


async def scrub_visits(db: Database, *, before: float, limit: int) -> int:
    """Clear the personal fields of up to `limit` visits last seen before `before`."""
    return await db.execute(_SCRUB_VISITS, (time.time(), before, limit))


async def scrub_outbox(db: Database, *, before: float, limit: int) -> int:
    """The same for up to `limit` delivered or parked outbox rows created before `before`."""
    return await db.execute(_scrub_outbox(db.dialect), (time.time(), before, limit))


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What forgetting one person changed: rows deleted and rows unlinked, per table."""

    deleted: dict[str, int] = field(default_factory=dict)
    unlinked: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.deleted.values()) + sum(self.unlinked.values())


async def forget_user(db: Database, user_id: int) -> Forgotten:
    """Erase everything the bridge holds about Telegram user `user_id`, atomically."""
    async with db.transaction() as tx:
        return await _forget(tx, user_id)


async def _ids(tx: Transaction, sql: str, params: Sequence[object]) -> list[int]:
    rows = await tx.fetchall(sql, tuple(params))
    return sorted({int(r[0]) for r in rows if r[0] is not None})


async def _run(tx: Transaction, sql: str, params: Sequence[object]) -> int:
    return max(await tx.execute(sql, tuple(params)), 0)


def _among(values: Sequence[object]) -> str:
    """`IN (?, ?)` for `values`: one person's rows, a handful. `IN (NULL)` matches
    nothing, where PostgreSQL would refuse an empty `IN ()`."""
    return f"IN ({marks(len(values))})" if values else "IN (NULL)"


async def _forget(tx: Transaction, user_id: int) -> Forgotten:
    deleted: dict[str, int] = {}
    unlinked: dict[str, int] = {}
    join_ids = await _ids(tx, "SELECT id FROM joins WHERE user_id = ?", (user_id,))
    link_ids = await _ids(
        tx,
        "SELECT link_id FROM joins WHERE user_id = ? UNION SELECT link_id FROM join_requests"
        " WHERE user_id = ?",
        (user_id, user_id),
    )
    # A visit is its visitor's; the join (or request) tells us which visit they were.
    visit_ids = await _ids(
        tx, f"SELECT visit_id FROM invite_links WHERE id {_among(link_ids)}", link_ids
    )
    temp_ids = [
        str(r[0])
        for r in await tx.fetchall(
            f"SELECT temp_id FROM visits WHERE id {_among(visit_ids)}", tuple(visit_ids)
        )
    ]
    update_ids = await _ids(
        tx,
        "SELECT update_id FROM joins WHERE user_id = ? UNION SELECT update_id FROM leaves"
        " WHERE user_id = ? UNION SELECT update_id FROM join_requests WHERE user_id = ?",
        (user_id, user_id, user_id),
    )
    outbox_ids = await _ids(
        tx,
        f"SELECT id FROM outbox WHERE telegram_user_id = ? OR join_id {_among(join_ids)}"
        " OR (kind IN ('visit', 'update_fbp')"
        f" AND {tx.dialect.json_text('body', ('tempId',))} {_among(temp_ids)})",
        (user_id, *join_ids, *temp_ids),
    )
    parents: dict[str, list[int]] = {"joins": join_ids, "visits": visit_ids, "outbox": outbox_ids}

    # Tables added by later features: rows naming the person, or about their joins,
    # visits or outbox rows (deleted before those, for the foreign keys).
    for table in await _other_tables(tx):
        columns = await _columns(tx, table)
        terms: list[str] = []
        params: list[object] = []
        for column in sorted(columns & set(_USER_COLUMNS)):
            terms.append(f'"{column}" = ?')
            params.append(user_id)
        for column, parent in await _references(tx, table):
            if parent in parents:
                terms.append(f'"{column}" {_among(parents[parent])}')
                params.extend(parents[parent])
        if terms:
            count = await _run(tx, f'DELETE FROM "{table}" WHERE {" OR ".join(terms)}', params)
            if count:
                deleted[table] = count

    deleted["outbox"] = await _run(
        tx, f"DELETE FROM outbox WHERE id {_among(outbox_ids)}", outbox_ids
    )
    deleted["joins"] = await _run(tx, "DELETE FROM joins WHERE user_id = ?", (user_id,))
    deleted["leaves"] = await _run(tx, "DELETE FROM leaves WHERE user_id = ?", (user_id,))
    deleted["join_requests"] = await _run(
        tx, "DELETE FROM join_requests WHERE user_id = ?", (user_id,)
    )
    # The links are the channel's and stay; they lose the visit. Discarded, so an
    # unused one never goes back into the pool for someone else.
    unlinked["invite_links"] = await _run(
        tx,
        "UPDATE invite_links SET visit_id = NULL, discarded_at = coalesce(discarded_at, ?)"
        f" WHERE visit_id {_among(visit_ids)}",
        (time.time(), *visit_ids),
    )
    deleted["visits"] = await _run(
        tx, f"DELETE FROM visits WHERE id {_among(visit_ids)}", visit_ids
    )
    # Compared as text: JSON numbers read as text alike on both engines.
    user_terms = " OR ".join(
        f"{tx.dialect.json_text('raw', path)} = ?" for path in _UPDATE_USER_PATHS
    )
    deleted["updates"] = await _run(
        tx,
        f"DELETE FROM updates WHERE update_id {_among(update_ids)} OR {user_terms}",
        (*update_ids, *([str(user_id)] * len(_UPDATE_USER_PATHS))),
    )
    if "promoted_by" in await _columns(tx, "channels"):
        unlinked["channels"] = await _run(
            tx, "UPDATE channels SET promoted_by = NULL WHERE promoted_by = ?", (user_id,)
        )
    return Forgotten(deleted, {k: v for k, v in unlinked.items() if v})


async def _other_tables(tx: Transaction) -> list[str]:
    rows = await tx.fetchall(tx.dialect.tables)
    return sorted(str(r[0]) for r in rows if str(r[0]) not in _HANDLED)


async def _columns(tx: Transaction, table: str) -> set[str]:
    rows = await tx.fetchall(tx.dialect.columns, (table,))
    return {str(r[0]) for r in rows}


async def _references(tx: Transaction, table: str) -> list[tuple[str, str]]:
    """(column, parent table) of the table's foreign keys."""
    rows = await tx.fetchall(tx.dialect.references, (table,))
    return [(str(r[0]), str(r[1])) for r in rows]
