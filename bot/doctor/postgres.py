"""The doctor's checks of PostgreSQL, when DATABASE_URL is set: the URL, the
server, the schema's version and who leads. Like the SQLite checks they only
look: no migration, no lock taken, every step under a short deadline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bot.cluster.database_url import EXAMPLE, check, masked, scrub, with_connect_timeout
from bot.cluster.leadership import find_leader
from bot.doctor.checklist import Check, fail, ok, skip, warn
from storage import channels
from storage.channels import Channel
from storage.db import latest_version
from storage.inspection import schema_state, server_version
from storage.postgres import PostgresDatabase

URL = "database URL"
SERVER = "database server"
SCHEMA = "database schema"
LEADER = "leader"
# Seconds to wait for the server to answer (libpq's connect_timeout, whole seconds).
CONNECT_TIMEOUT = 5
# Seconds any later step (a query, the leader's look-up) may take.
STEP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PostgresFindings:
    checks: list[Check]
    # The channels it tracks; None when they could not be read, and then why.
    channels: list[Channel] | None
    unread: str = "not checked: the database check failed"


async def postgres(url: str, sqlite_path: Path) -> PostgresFindings:
    """Every PostgreSQL line, in order; a step that fails leaves those after it
    unchecked (SKIP), as its line says."""
    try:
        parts = check(url)
    except ValueError as error:
        return PostgresFindings(
            [
                fail(URL, f"DATABASE_URL does not parse: {error}", f"write it as {EXAMPLE}."),
                skip(SERVER, "not checked: DATABASE_URL does not parse"),
                skip(SCHEMA, "not checked: DATABASE_URL does not parse"),
                skip(LEADER, "not checked: DATABASE_URL does not parse"),
            ],
            None,
        )
    where = f"{parts.get('host') or 'the local socket'}:{parts.get('port') or 5432}"
    checks = [ok(URL, f"{masked(url)}: PostgreSQL at {where}")]
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT + 1):
            db = await _open(url)
    except (psycopg.Error, OSError, TimeoutError) as error:
        checks.append(
            fail(
                SERVER,
                f"no connection to {where}: {_reason(error, url)}",
                "start PostgreSQL there, or correct DATABASE_URL's host, port, user, password"
                " and database (and check the server's listen_addresses, pg_hba.conf and the"
                " firewall between them).",
            )
        )
        checks += [skip(SCHEMA, "not checked: no connection"), skip(LEADER, "not checked")]
        return PostgresFindings(checks, None, "not checked: no connection to the database")
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            checks.append(ok(SERVER, f"{await server_version(db)} answers at {where}"))
            schema, tracked, unread = await _schema(db, sqlite_path)
            checks.append(schema)
    except (psycopg.Error, OSError, TimeoutError) as error:
        checks.append(
            fail(
                SCHEMA,
                f"not read: {_reason(error, url)}",
                "check that DATABASE_URL's user may read the database's tables (the bridge's"
                " user owns them), then run doctor again.",
            )
        )
        tracked, unread = None, "not checked: the database could not be read"
    finally:
        await db.close()
    checks.append(await _leader(url))
    return PostgresFindings(checks, tracked, unread)


async def _open(url: str) -> PostgresDatabase:
    return await PostgresDatabase.open(with_connect_timeout(url, CONNECT_TIMEOUT))


async def _schema(
    db: PostgresDatabase, sqlite_path: Path
) -> tuple[Check, list[Channel] | None, str]:
    """The schema line, and the channels the other checks go on with."""
    latest = latest_version()
    state = await schema_state(db)
    if state.version is None and state.tables:
        return (
            fail(
                SCHEMA,
                f"the database holds {state.tables} tables but no Joinbridge schema",
                "point DATABASE_URL at a database of the bridge's own (createdb joinbridge).",
            ),
            None,
            "not checked: the database is not Joinbridge's",
        )
    if state.version is None:
        if await asyncio.to_thread(sqlite_path.is_file):
            return (
                warn(
                    SCHEMA,
                    f"empty: the bridge creates the schema at its first start, without what"
                    f" the SQLite database {sqlite_path} holds",
                    "to keep its joins, links and queued conversions, stop the bridge and run"
                    " `joinbridge migrate-to-postgres <DATABASE_URL>` before the first start.",
                ),
                [],
                "",
            )
        return ok(SCHEMA, "empty: the bridge creates the schema at its first start"), [], ""
    if state.version > latest:
        return (
            fail(
                SCHEMA,
                f"schema version {state.version}, newer than this Joinbridge knows ({latest}):"
                " a newer release wrote it",
                "run the Joinbridge release that wrote it on every machine.",
            ),
            None,
            "not checked: the schema is newer than this release",
        )
    tracked = await channels.list_all(db) if state.version == latest else None
    if state.version == latest:
        return ok(SCHEMA, f"schema version {state.version}, the latest"), tracked, ""
    return (
        ok(
            SCHEMA,
            f"schema version {state.version}: will migrate {state.version}→{latest} at start",
        ),
        None,
        "not checked: the database is migrated at start; run doctor again then",
    )


async def _leader(url: str) -> Check:
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            leader = await find_leader(with_connect_timeout(url, CONNECT_TIMEOUT))
    except (psycopg.Error, OSError, TimeoutError) as error:
        return warn(LEADER, f"not read: {_reason(error, url)}", "run doctor again.")
    if leader is None:
        return ok(LEADER, "no leader (no bridge running)")
    since = f", since {leader.since:%Y-%m-%d %H:%M:%S %Z}" if leader.since else ""
    return ok(LEADER, f"{leader.identity}{since}")


def _reason(error: BaseException, url: str) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return scrub(lines[0] if lines else type(error).__name__, url)
