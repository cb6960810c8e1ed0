"""The files `python -m bot` creates are its own user's only: the database with
its -wal, -shm and .lock files, the folder it makes for them, and a backup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from tests.harness import ROOT, BridgeProcess, bridge_env

STARTUP = 60.0  # a cold `python -m bot` on two busy cores takes several seconds


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


@contextlib.contextmanager
def permissive_umask() -> Iterator[None]:
    """Children started meanwhile inherit umask 022, as a shell leaves it for most
    users (group and others may read), whatever umask this test runs under."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def test_database_files_and_backups_are_owner_only(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    database = tmp_path / "data" / "bridge.db"  # the folder is the bridge's to create
    env = bridge_env(tmp_path, telegram, adtarget, database_path=str(database))
    bridge = BridgeProcess(env, tmp_path / "bridge.log")
    with permissive_umask():
        await bridge.start()
    try:
        # Polling starts once the database is open and migrated.
        await telegram.wait_for_call("getUpdates", timeout=STARTUP)
        files = [database, *(Path(f"{database}{suffix}") for suffix in ("-wal", "-shm", ".lock"))]
        assert {path.name: mode(path) for path in files} == {
            path.name: "0o600" for path in files
        }, bridge.log()
        assert mode(database.parent) == "0o700"

        copy = tmp_path / "copy.db"
        with permissive_umask():
            backup = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "backup",
                str(copy),
                "--database",
                str(database),
                cwd=tmp_path,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        out, _ = await asyncio.wait_for(backup.communicate(), timeout=STARTUP)
        assert backup.returncode == 0, out.decode(errors="replace")
        assert mode(copy) == "0o600"
        bridge.terminate()
        assert await bridge.wait(30) == 0, bridge.log()
    finally:
        await bridge.ensure_dead()
