"""`python -m bot doctor` with DATABASE_URL: the URL, the server, the schema and
the leader, each a line; an unreachable server fails with its fix (exit 1)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.cluster.leadership import Leadership
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage.db import latest_version
from tests.e2e.test_doctor import ADTARGET_CHANNEL, doctor, remote_channel
from tests.harness import (
    CHANNEL_ID,
    CHANNEL_TITLE,
    RunningBridge,
    bridge_env,
    bridge_settings,
    eventually,
)

# PostgreSQL by itself.
pytestmark = pytest.mark.one_engine


PASSWORD = "doctor-Pa55word"


@pytest.fixture
async def site() -> AsyncIterator[FakeAdTarget]:
    fake = FakeAdTarget(channels=[remote_channel(CHANNEL_ID, ADTARGET_CHANNEL, CHANNEL_TITLE)])
    await fake.start()
    yield fake
    await fake.stop()


def with_password(url: str) -> str:
    """The test server trusts local logins; a password shows that none is printed."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_healthy_server_and_who_leads(
    tmp_path: Path, telegram: FakeTelegram, site: FakeAdTarget, postgres_url: str
) -> None:
    url = with_password(postgres_url)
    running = RunningBridge(bridge_settings(tmp_path, telegram, site, database_url=url))
    await running.start()
    await running.track_channel(telegram)
    assert await running.stop() == 0
    env = bridge_env(tmp_path, telegram, site, database_url=url)

    ran = await doctor(env, tmp_path)
    assert ran.status == 0, ran.out + ran.err
    assert PASSWORD not in ran.out + ran.err
    masked = url.replace(PASSWORD, "***")
    assert f"database {masked} (DATABASE_URL)" in ran.line("✓ settings:")
    assert ran.line(f"✓ database URL: {masked}: PostgreSQL at 127.0.0.1:")
    assert " answers at 127.0.0.1:" in ran.line("✓ database server: PostgreSQL ")
    assert ran.line(f"✓ database schema: schema version {latest_version()}, the latest")
    assert ran.line("✓ leader: no leader (no bridge running)")
    # The channels are read from PostgreSQL, where the bridge tracked it.
    assert ran.line(f"✓ channel “{CHANNEL_TITLE}” ({CHANNEL_ID}) on AdTarget:")

    leadership = Leadership(postgres_url, identity="joinbridge test-host pid 4242")
    leadership.start()
    try:
        await eventually(lambda: leadership.is_leader, what="elected")
        ran = await doctor(env, tmp_path)
    finally:
        await leadership.aclose()
    assert ran.line("✓ leader: joinbridge test-host pid 4242, since ")


async def test_an_unreachable_server_fails_with_its_fix(
    tmp_path: Path, telegram: FakeTelegram, site: FakeAdTarget
) -> None:
    url = f"postgresql://joinbridge:{PASSWORD}@127.0.0.1:{free_port()}/joinbridge"
    env = bridge_env(tmp_path, telegram, site, database_url=url)
    ran = await doctor(env, tmp_path)
    assert ran.status == 1
    assert PASSWORD not in ran.out + ran.err
    line = ran.line("✗ database server: no connection to 127.0.0.1:")
    assert "Connection refused" in line or "connection failed" in line, line
    assert "start PostgreSQL there" in ran.fix_after("✗ database server:")
    assert ran.line("- database schema: not checked")
    assert ran.line("- channels: not checked: no connection to the database")


async def test_an_empty_database_beside_a_sqlite_file_warns_to_migrate(
    tmp_path: Path, telegram: FakeTelegram, site: FakeAdTarget, postgres_url: str
) -> None:
    running = RunningBridge(bridge_settings(tmp_path, telegram, site))  # on SQLite
    await running.start()
    assert await running.stop() == 0
    env = bridge_env(tmp_path, telegram, site, database_url=postgres_url)
    ran = await doctor(env, tmp_path)
    assert ran.status == 1
    assert "without what the SQLite database" in ran.line("! database schema: empty")
    assert "joinbridge migrate-to-postgres" in ran.fix_after("! database schema:")
