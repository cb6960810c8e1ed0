"""`python -m bot backup`: a consistent copy while another connection keeps committing,
the copy verified before it lands, and clear exit statuses for mistakes."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bot import cli
from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage.backup import backup
from storage.db import open_database
from tests.harness import CHANNEL_ID, RunningBridge, bridge_settings, eventually

SEEDED = 3000


async def _seeded_database(path: Path) -> None:
    """The bridge's schema, with enough visits that a copy takes many steps."""
    db = await open_database(path)
    await db.close()
    with sqlite3.connect(path) as conn:
        for n in range(1, SEEDED + 1):
            _write_pair(conn, n)


def _write_pair(conn: sqlite3.Connection, n: int) -> None:
    """One visit and its forward in one transaction: a consistent copy has as many of
    one as of the other, numbered 1..n without a gap."""
    now = time.time()
    conn.execute(
        "INSERT INTO visits (id, temp_id, href, client_ip, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (n, f"temp-{n}", f"https://landing.example/?n={n}&p={'x' * 200}", "203.0.113.9", now, now),
    )
    conn.execute(
        "INSERT INTO outbox (id, kind, path, body, idempotency_key, next_attempt_at, created_at)"
        " VALUES (?, 'visit', '/events/visit', ?, ?, ?, ?)",
        (n, json.dumps({"tempId": f"temp-{n}"}), f"jb-visit-{n}", now, now),
    )


class Writer:
    """A second connection committing visit+outbox pairs as fast as it can."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.committed = SEEDED
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, timeout=5, isolation_level=None)
            try:
                while not self._stop.is_set():
                    conn.execute("BEGIN IMMEDIATE")
                    _write_pair(conn, self.committed + 1)
                    conn.execute("COMMIT")
                    self.committed += 1
            finally:
                conn.close()
        except BaseException as error:
            self.error = error

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.committed < count:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"writer reached {self.committed}, not {count}")
            time.sleep(0.005)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.db"
    asyncio.run(_seeded_database(path))
    return path


def _counts(path: Path) -> tuple[int, int, int, str]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        visits, top = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM visits").fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
    finally:
        conn.close()
    return int(visits), int(top), int(rows), str(check)


def test_copy_while_writing_is_one_consistent_snapshot(database: Path, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    steps_seen: list[int] = []
    with Writer(database) as writer:
        writer.wait_for(SEEDED + 10)
        started_at = writer.committed

        def between_steps(remaining: int, total: int) -> None:
            # The copy is under way: the writer must keep committing meanwhile (it
            # is never blocked), and none of that may leak into the copy.
            if not steps_seen:
                writer.wait_for(writer.committed + 50)
            steps_seen.append(remaining)

        result = backup(database, target, pages_per_step=8, on_step=between_steps)
        finished_at = writer.committed
    assert writer.error is None
    assert len(steps_seen) > 10  # really copied in many small steps
    assert finished_at >= started_at + 50
    visits, top, rows, check = _counts(target)
    assert check == "ok"
    # Every row count is one the writer committed: both tables agree, no gaps.
    assert visits == rows == top
    assert started_at <= visits <= finished_at
    assert result.rows["visits"] == visits
    assert result.rows["outbox"] == rows
    assert result.size_bytes == target.stat().st_size
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_cli_prints_tables_and_size(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.db"
    assert cli.main(["backup", str(target), "--database", str(database)]) == 0
    out = capsys.readouterr().out
    assert "integrity_check: ok" in out
    assert re.search(rf"^  visits +{SEEDED:,}$", out, re.MULTILINE), out
    assert re.search(r"^  outbox +3,000$", out, re.MULTILINE), out
    assert "size:" in out
    assert _counts(target)[0] == SEEDED


def test_cli_refuses_to_overwrite_without_force(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "exists.db"
    target.write_text("keep me")
    assert cli.main(["backup", str(target), "--database", str(database)]) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert cli.main(["backup", str(target), "--force", "--database", str(database)]) == 0
    assert _counts(target)[3] == "ok"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("backup {t}/x.db --database {t}/none.db", "database: "),
        ("backup {t}/no/x.db --database {t}/bridge.db", "file: folder"),
        ("backup {t} --database {t}/bridge.db", "is a directory"),
        ("backup {t}/bridge.db --force --database {t}/bridge.db", "is the database itself"),
        ("backup", "the following arguments are required: file"),
    ],
)
def test_cli_usage_mistakes_exit_2(
    database: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: str,
    expected: str,
) -> None:
    assert cli.main(arguments.format(t=tmp_path).split()) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert _counts(database)[0] == SEEDED


def test_cli_failure_exits_1_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database at all" * 200)
    target = tmp_path / "copy.db"
    assert cli.main(["backup", str(target), "--database", str(broken)]) == 1
    assert "failed" in capsys.readouterr().err
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.db"]


async def test_backup_of_the_running_bridge(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    """The real bridge keeps recording joins while the copy is taken."""
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget))
    await running.start()
    try:
        await running.track_channel(telegram)
        for user in range(1, 40):
            telegram.join(CHANNEL_ID, 7000 + user)
        recorded = "SELECT count(*) FROM joins"

        async def some_recorded() -> bool:
            return bool(await running.scalar(recorded))

        await eventually(some_recorded, what="a first join recorded")
        target = tmp_path / "live.db"
        # The copy is the database at one moment while the command ran.
        at_start = await running.scalar(recorded)
        status = await asyncio.to_thread(
            cli.main, ["backup", str(target), "--database", str(running.settings.database_path)]
        )
        at_end = await running.scalar(recorded)
        assert status == 0
        for user in range(40, 60):
            telegram.join(CHANNEL_ID, 7000 + user)
        await running.wait_scalar("SELECT count(*) FROM joins", 59)
    finally:
        assert await running.stop() == 0
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (joins,) = conn.execute("SELECT count(*) FROM joins").fetchone()
        (channels,) = conn.execute("SELECT count(*) FROM channels").fetchone()
        (done,) = conn.execute(
            "SELECT count(*) FROM updates WHERE kind = 'chat_member' AND state = 'done'"
        ).fetchone()
    finally:
        conn.close()
    assert channels == 1
    # A join and its update's `done` mark are one transaction: the copy has both or neither.
    assert joins == done
    assert 1 <= at_start <= joins <= at_end <= 39
