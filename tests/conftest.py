"""Shared fixtures: a bare database (`db`), the loopback fakes, and a running bridge
with one tracked channel (`admin_bridge`: the same with OWNER in ADMIN_IDS)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.harness as harness
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage.db import Database, open_database, open_database_url
from storage.sqlite import SqliteDatabase
from tests.harness import (
    CHANNEL_ID,
    CHANNEL_TITLE,
    OWNER,
    RunningBridge,
    StartBridge,
    start_tracked,
)
from tests.postgres import PostgresError, PostgresServer, PostgresUnavailable


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    """A migrated database of the test's own, no bridge around it."""
    database = await open_database(tmp_path / "bridge.db")
    yield database
    await database.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def engine_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database of the test's own on each engine in turn: SQLite, then
    PostgreSQL (a fresh database on the session's server, `postgres_url`)."""
    if request.param == "sqlite":
        database: Database = await open_database(tmp_path / "bridge.db")
    else:
        database = await open_database_url(request.getfixturevalue("postgres_url"))
    yield database
    await database.close()


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    fake.add_channel(CHANNEL_ID, CHANNEL_TITLE)
    yield fake
    await fake.stop()


@pytest.fixture
async def adtarget() -> AsyncIterator[FakeAdTarget]:
    fake = FakeAdTarget()
    await fake.start()
    yield fake
    await fake.stop()


async def _tracked_bridge(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, **overrides: str
) -> AsyncIterator[RunningBridge]:
    running = await start_tracked(tmp_path, telegram, adtarget, **overrides)
    yield running
    if not running.stop_event.is_set():
        assert await running.stop() == 0


@pytest.fixture
async def bridge(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> AsyncIterator[RunningBridge]:
    async for running in _tracked_bridge(tmp_path, telegram, adtarget):
        yield running


@pytest.fixture
async def admin_bridge(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> AsyncIterator[RunningBridge]:
    """A bridge with OWNER in ADMIN_IDS and the channel tracked."""
    async for running in _tracked_bridge(tmp_path, telegram, adtarget, admin_ids=str(OWNER)):
        yield running


@pytest.fixture
def start_bridge(
    tmp_path: Path,
    telegram: FakeTelegram,
    adtarget: FakeAdTarget,
    custom_bridge: list[RunningBridge],
) -> StartBridge:
    """Starts a bridge with the test's own settings, the channel tracked; each is
    stopped cleanly at the end."""

    async def start(**overrides: Any) -> RunningBridge:
        running = await start_tracked(tmp_path, telegram, adtarget, **overrides)
        custom_bridge.append(running)
        return running

    return start


@pytest.fixture
async def custom_bridge() -> AsyncIterator[list[RunningBridge]]:
    """Bridges a test starts with its own settings, stopped cleanly at the end."""
    started: list[RunningBridge] = []
    yield started
    for running in started:
        if not running.stop_event.is_set():
            assert await running.stop() == 0


# PostgreSQL (issue 20): one throwaway server per session (tests/postgres.py), a fresh
# empty database per test. A test using them is skipped when no server can be started,
# unless JOINBRIDGE_REQUIRE_POSTGRES=1 (`make test` and .ci/run set it): then it fails.
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start()
    except (PostgresUnavailable, PostgresError) as error:
        if os.environ.get("JOINBRIDGE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"JOINBRIDGE_REQUIRE_POSTGRES=1, no PostgreSQL: {error}", pytrace=False)
        pytest.skip(f"no PostgreSQL server could be started: {error}")
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """postgresql://…: an empty database of the test's own, dropped after it."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


# The end-to-end suite on either engine: `pytest --engine postgres` gives every bridge
# a fresh PostgreSQL database of its test (harness.ENGINE). Tests marked `one_engine`
# are left out of that pass (deselected, not skipped): they look at the SQLite file
# itself or a SQLite-only tool, or choose their engines themselves (the PostgreSQL
# failover, migration and doctor tests), so the default pass runs them all.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the store the end-to-end bridges run on",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "one_engine: looks at the SQLite file, or picks its engines itself; default pass only",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--engine") != "postgres":
        return
    kept = [item for item in items if item.get_closest_marker("one_engine") is None]
    left_out = [item for item in items if item.get_closest_marker("one_engine") is not None]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(autouse=True)
def engine(request: pytest.FixtureRequest) -> Iterator[None]:
    """With `--engine postgres`, the test's bridges share a fresh PostgreSQL database."""
    if request.config.getoption("--engine") != "postgres":
        yield
        return
    url = request.getfixturevalue("postgres_url")
    harness.ENGINE["database_url"] = url
    try:
        yield
    finally:
        harness.ENGINE.clear()
