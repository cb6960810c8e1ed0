"""An online copy of the database with SQLite's backup API, safe beside a running bridge.

The copy is taken in steps of a few pages with a short pause between them, so
the copying never hogs the disk. All steps read one snapshot: the source
connection holds a read transaction for the whole copy. Without it SQLite
restarts a paged backup whenever another connection commits, and under the
bridge's steady writes it would never finish. In WAL mode a reader does not
block the writer: the bridge keeps committing (into the WAL) while the copy runs.

The copy is written to a temporary file beside the target, checked with
`PRAGMA integrity_check`, and only then renamed into place, so the target name
never holds a partial or unverified copy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.db import BUSY_TIMEOUT_MS

PAGES_PER_STEP = 256
PAUSE_BETWEEN_STEPS = 0.002  # seconds


class BackupError(Exception):
    """The copy could not be made or did not verify."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    size_bytes: int
    rows: dict[str, int]  # table -> rows in the copy
    steps: int


def backup(
    source: Path,
    target: Path,
    *,
    force: bool = False,
    pages_per_step: int = PAGES_PER_STEP,
    pause: float = PAUSE_BETWEEN_STEPS,
    on_step: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Copy `source` to `target`; raises BackupError on failure (ValueError when
    `target` must not be written, see `check_target`). `on_step(remaining, total)`
    is called between steps, in pages."""
    check_target(target, force=force)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".partial", dir=target.parent
    )
    os.close(handle)
    temp = Path(temp_name)
    try:
        steps = _copy(source, temp, pages_per_step, pause, on_step)
        rows = _verify(temp)
        _fsync(temp)
        if not force and target.exists():  # appeared while we were copying
            raise BackupError(f"{target} appeared during the copy; not overwriting it")
        os.replace(temp, target)
        _fsync_dir(target.parent)
    except BaseException:
        _remove_with_sidecars(temp)
        raise
    return BackupResult(target, target.stat().st_size, rows, steps)


def check_target(target: Path, *, force: bool) -> None:
    """Raise ValueError (a usage mistake) when `target` cannot or must not be written."""
    if target.is_dir():
        raise ValueError(f"{target} is a directory; give a file name")
    if not target.parent.is_dir():
        raise ValueError(f"folder {target.parent} does not exist")
    if target.exists() and not force:
        raise ValueError(f"{target} already exists (use --force to overwrite it)")


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"  # the source is never created by accident
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?mode={mode}",
        uri=True,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
    )


def _copy(
    source: Path,
    temp: Path,
    pages_per_step: int,
    pause: float,
    on_step: Callable[[int, int], None] | None,
) -> int:
    steps = 0
    last_remaining: int | None = None

    def progress(status: int, remaining: int, total: int) -> None:
        nonlocal steps, last_remaining
        steps += 1
        if last_remaining is not None and remaining > last_remaining:
            # SQLite started over: something changed the snapshot. Never loop forever.
            raise BackupError("the database changed under the copy; try again")
        last_remaining = remaining
        if on_step is not None:
            on_step(remaining, total)
        if remaining and pause > 0:
            # Between steps: leave the disk to the bridge for a moment.
            time.sleep(pause)

    try:
        with (
            _closing(_connect(source, create=False)) as src,
            _closing(_connect(temp, create=True)) as dst,
        ):
            # One snapshot for every step (see the module docstring).
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            try:
                src.backup(dst, pages=pages_per_step, progress=progress)
            finally:
                src.execute("COMMIT")
    except sqlite3.Error as error:
        raise BackupError(f"copying failed: {error}") from error
    return steps


def _verify(path: Path) -> dict[str, int]:
    """integrity_check on the copy, then rows per table."""
    try:
        with _closing(_connect(path, create=False)) as conn:
            problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if problems != ["ok"]:
                raise BackupError("the copy failed integrity_check: " + "; ".join(problems[:5]))
            tables = [
                str(r[0])
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            return {
                name: int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])
                for name in tables
            }
    except sqlite3.Error as error:
        raise BackupError(f"the copy cannot be read: {error}") from error


@contextlib.contextmanager
def _closing(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield conn
    finally:
        conn.close()


def _fsync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_with_sidecars(path: Path) -> None:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
