"""The throwaway PostgreSQL server the tests start themselves (tests/postgres.py), and
the server features issue 20 builds on, each shown through psycopg's async API as the
bridge will use it: advisory locks (the leader), LISTEN/NOTIFY (waking the courier),
FOR UPDATE SKIP LOCKED (outbox claims).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from tests.harness import ROOT, eventually
from tests.postgres import PostgresServer

LEADER_LOCK = 20  # any bigint: the key both sessions ask for


async def _connect(url: str) -> AsyncConnection[tuple[Any, ...]]:
    return await AsyncConnection.connect(url, autocommit=True)


async def test_the_server_answers_with_test_settings(postgres_url: str) -> None:
    async with await _connect(postgres_url) as connection:
        assert await (await connection.execute("SELECT 1")).fetchone() == (1,)
        settings = await connection.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (["fsync", "listen_addresses", "max_connections", "synchronous_commit"],),
        )
        assert await settings.fetchall() == [
            ("fsync", "off"),
            ("listen_addresses", "127.0.0.1"),
            ("max_connections", "200"),
            ("synchronous_commit", "off"),
        ]


async def test_each_test_gets_an_empty_database_of_its_own(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    assert postgres_url.startswith(f"postgresql://joinbridge@127.0.0.1:{postgres_server.port}/")
    other = postgres_server.create_database()
    try:
        async with await _connect(postgres_url) as mine, await _connect(other) as theirs:
            tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            assert await (await mine.execute(tables)).fetchone() == (0,)
            await mine.execute("CREATE TABLE visits (id bigint PRIMARY KEY)")
            assert await (await mine.execute(tables)).fetchone() == (1,)
            assert await (await theirs.execute(tables)).fetchone() == (0,)
    finally:
        postgres_server.drop_database(other)


async def test_an_advisory_lock_is_one_sessions_until_that_session_ends(
    postgres_url: str,
) -> None:
    take = "SELECT pg_try_advisory_lock(%s)"
    async with await _connect(postgres_url) as leader, await _connect(postgres_url) as standby:
        assert await (await leader.execute(take, (LEADER_LOCK,))).fetchone() == (True,)
        assert await (await standby.execute(take, (LEADER_LOCK,))).fetchone() == (False,)
        await leader.close()  # as a killed leader's session ends

        async def standby_takes_over() -> bool:
            row = await (await standby.execute(take, (LEADER_LOCK,))).fetchone()
            return row == (True,)

        # The server releases the lock when the closed session's backend has exited.
        await eventually(standby_takes_over, what="the lock passing to the standby")


async def test_listen_notify_delivers_the_payload_to_another_session(postgres_url: str) -> None:
    async with await _connect(postgres_url) as courier, await _connect(postgres_url) as writer:
        await courier.execute("LISTEN outbox")
        async with writer.transaction():  # delivered when the writing transaction commits
            await writer.execute("SELECT pg_notify('outbox', %s)", ("row 42",))
        received = [n async for n in courier.notifies(timeout=30, stop_after=1)]
        assert [(n.channel, n.payload) for n in received] == [("outbox", "row 42")]


async def test_skip_locked_claims_the_rows_another_transaction_has_not_locked(
    postgres_url: str,
) -> None:
    async with await _connect(postgres_url) as one, await _connect(postgres_url) as two:
        await one.execute("CREATE TABLE outbox (id bigint PRIMARY KEY)")
        await one.execute("INSERT INTO outbox SELECT generate_series(1, 3)")
        claim = "SELECT id FROM outbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
        async with one.transaction(), two.transaction():
            assert await (await one.execute(claim, (1,))).fetchall() == [(1,)]
            assert await (await two.execute(claim, (5,))).fetchall() == [(2,), (3,)]
            # Without SKIP LOCKED, row 1 is refused (NOWAIT) rather than skipped.
            with pytest.raises(psycopg.errors.LockNotAvailable):
                async with two.transaction():  # a savepoint: the claim above stays
                    await two.execute("SELECT id FROM outbox WHERE id = 1 FOR UPDATE NOWAIT")


def test_a_stopped_server_is_gone_with_its_folder(postgres_server: PostgresServer) -> None:
    # A server of this test's own; the session's (requested above) makes this test
    # skip or fail as every PostgreSQL test does when none can be started.
    server = PostgresServer.start()
    with server:
        assert server.running
        assert (server.folder / "data").is_dir()
        if os.geteuid() == 0:  # initdb and postgres refuse root: they ran as another user
            assert (server.folder / "data").stat().st_uid != 0
        with psycopg.connect(server.url) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == ("joinbridge",)
    assert not server.running
    assert not server.folder.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=10).close()
    server.stop()  # a second stop does nothing


def test_without_a_server_a_test_skips_unless_postgres_is_required() -> None:
    # Two pytest runs of one PostgreSQL test, side by side, with no binaries to be found.
    test = f"{__file__}::test_the_server_answers_with_test_settings"
    runs = {}
    for required in ("", "1"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env |= {"JOINBRIDGE_POSTGRES_BIN": "/nonexistent", "JOINBRIDGE_REQUIRE_POSTGRES": required}
        runs[required] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    output = {required: run.communicate(timeout=120)[0] for required, run in runs.items()}
    assert runs[""].returncode == 0, output[""]
    assert "1 skipped" in output[""], output[""]
    assert runs["1"].returncode == 1, output["1"]
    assert "1 error" in output["1"], output["1"]
    assert "JOINBRIDGE_REQUIRE_POSTGRES=1, no PostgreSQL" in output["1"], output["1"]
    for text in output.values():
        assert "no PostgreSQL server binaries" in text, text
