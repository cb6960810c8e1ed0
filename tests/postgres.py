"""A throwaway PostgreSQL server for the tests and bench/, started from the machine's
own server binaries (Debian's `postgresql` package; `.ci/ensure-postgres` installs it).

    with PostgresServer.start() as server:
        server.url                        # postgresql://joinbridge@127.0.0.1:PORT/joinbridge
        url = server.create_database()    # a fresh empty database of its own

`start()` makes a temporary folder (in /dev/shm when it has room), runs initdb in it,
starts the server on 127.0.0.1 at a free port (and a unix socket in the same folder)
with settings for tests (no fsync, 200 connections), and creates the database
`joinbridge`. `stop()`, the `with` block's end, or at the latest the interpreter's exit,
stops the server and deletes the folder.

initdb and postgres refuse to run as root. As root, every server command runs as the
`postgres` system user (which Debian's package creates; `nobody` when it is missing, or
the user named in JOINBRIDGE_POSTGRES_USER), owning the temporary folder; as anyone
else, as oneself. The binaries are those in JOINBRIDGE_POSTGRES_BIN when it is set,
else those beside `pg_ctl` on PATH, else /usr/lib/postgresql/<version>/bin's, newest
first. PostgreSQL 13 or newer.

`python -m tests.postgres` prints how long a start and a fresh database take;
`python -m tests.postgres --serve` keeps a server running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

SUPERUSER = "joinbridge"
DATABASE = "joinbridge"
# Debian's layout: one folder per major version, none of them on PATH.
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
PROGRAMS = ("initdb", "pg_ctl", "postgres")
PREFIX = "joinbridge-pg-"  # the temporary folder's name: PREFIX<creator pid>-<random>
# A test server: nothing it holds must survive a crash, and several bridge processes,
# each with a pool, share it.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}
# Memory-backed when there is room: a fresh database there takes about a tenth of the
# time it takes on this machine's disk (docs/development.md has the figures).
RAM_FOLDER = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a private folder in it)
RAM_ROOM = 1 << 30  # bytes free that RAM_FOLDER must have to be used
WAIT = 60  # seconds pg_ctl waits for a start or a stop
PORT_TRIES = 5  # a port found free can be taken before the server binds it


class PostgresUnavailable(RuntimeError):
    """No server can be started here: binaries or a user to run them are missing."""


class PostgresError(RuntimeError):
    """A server command failed; the message carries its output."""


@dataclass(frozen=True)
class _Runner:
    """Runs the server's commands, as `user` when we are root."""

    bindir: Path
    user: pwd.struct_passwd | None

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        user = self.user
        return subprocess.run(
            [str(self.bindir / program), *args],
            env=_environment(),
            capture_output=True,
            text=True,
            check=False,
            timeout=WAIT + 30,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],  # none of ours
        )

    def must(self, program: str, *args: str) -> None:
        done = self.run(program, *args)
        if done.returncode != 0:
            raise PostgresError(f"{program} failed ({done.returncode}):\n{_output(done)}")

    @property
    def uid(self) -> int:
        return os.geteuid() if self.user is None else self.user.pw_uid

    def own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)


class PostgresServer:
    """One running server in a temporary folder of its own; see the module's doc."""

    def __init__(self, runner: _Runner, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.host = "127.0.0.1"
        self.user = SUPERUSER
        self._runner = runner
        self._names = itertools.count(1)
        # Stops the server and deletes the folder once: on stop(), or when the object
        # is collected, or at the interpreter's exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _discard, runner, folder)

    @classmethod
    def start(cls, base: Path | None = None) -> PostgresServer:
        """Starts a server in a new folder under `base` (by default /dev/shm when it
        has room, else the system's temporary folder; as root, the server's user must
        be able to reach it).

        Raises PostgresUnavailable when no server can be run here, PostgresError when
        one fails to start."""
        runner = _Runner(find_binaries(), _server_user())
        if base is None:
            for temp in _temporary_folders():
                _reap_stale(temp, runner)
            base = _default_base()
        folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
        try:
            runner.own(folder)
            _initdb(runner, folder)
            port = _start(runner, folder)
            server = cls(runner, folder, port)
        except BaseException:
            _discard(runner, folder)
            raise
        try:
            server._create(DATABASE)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def url(self) -> str:
        """The URL of the database `joinbridge`, made at start."""
        return self.url_for(DATABASE)

    @property
    def socket_dir(self) -> Path:
        """The folder of the server's unix socket (libpq's host=<folder>)."""
        return self.folder

    @property
    def running(self) -> bool:
        return self._finalizer.alive

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Creates an empty database (a fresh name when none is given); its URL."""
        name = name or f"test_{next(self._names)}_{uuid.uuid4().hex[:8]}"
        self._create(name)
        return self.url_for(name)

    def drop_database(self, database: str) -> None:
        """Drops a database (its URL, as create_database gave it, or its name), ending
        any session still connected to it."""
        if "://" in database:
            database = str(conninfo_to_dict(database)["dbname"])
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        self._admin(statement.format(sql.Identifier(database)))

    def stop(self) -> None:
        """Stops the server at once (no checkpoint: nothing is kept) and deletes its
        folder. Does nothing the second time."""
        self._finalizer()

    def log(self) -> str:
        """What the server has logged so far."""
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _create(self, name: str) -> None:
        # template0 is the pristine one: nothing a test may have added to template1.
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0")
        self._admin(statement.format(sql.Identifier(name)))

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as connection:
            connection.execute(statement)


def find_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres: JOINBRIDGE_POSTGRES_BIN's alone
    when it is set."""
    candidates: list[Path] = []
    if chosen := os.environ.get("JOINBRIDGE_POSTGRES_BIN"):
        candidates.append(Path(chosen))
    else:
        if on_path := shutil.which("pg_ctl"):
            candidates.append(Path(on_path).resolve().parent)
        candidates.extend(sorted(DEBIAN_BINARIES.glob("*/bin"), key=_version, reverse=True))
    for folder in candidates:
        if all(os.access(folder / program, os.X_OK) for program in PROGRAMS):
            return folder
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in "
        "JOINBRIDGE_POSTGRES_BIN, on PATH or in /usr/lib/postgresql/*/bin; "
        "Debian/Ubuntu: apt-get install postgresql (bash .ci/ensure-postgres does it as root)"
    )


def _temporary_folders() -> list[Path]:
    return [RAM_FOLDER, Path(tempfile.gettempdir())]


def _default_base() -> Path:
    ram, disk = _temporary_folders()
    with contextlib.suppress(OSError):
        if os.access(ram, os.W_OK | os.X_OK) and shutil.disk_usage(ram).free >= RAM_ROOM:
            return ram
    return disk


def _version(folder: Path) -> tuple[int, ...]:
    digits = folder.parent.name.split(".")
    return tuple(int(d) for d in digits) if all(d.isdigit() for d in digits) else (0,)


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    names = [os.environ.get("JOINBRIDGE_POSTGRES_USER", ""), "postgres", "nobody"]
    for name in filter(None, names):
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
            if user.pw_uid != 0:
                return user
    raise PostgresUnavailable(
        "running as root, and initdb refuses root: no 'postgres' or 'nobody' user to run "
        "the server as (set JOINBRIDGE_POSTGRES_USER)"
    )


def _environment() -> dict[str, str]:
    """Ours, less libpq's and the server's PG* variables (PGDATA, PGPORT, …)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}


def _initdb(runner: _Runner, folder: Path) -> None:
    data = folder / "data"
    runner.must(
        "initdb",
        f"--pgdata={data}",
        f"--username={SUPERUSER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    )
    lines = [f"{key} = {value}" for key, value in SETTINGS.items()]
    lines.append(f"unix_socket_directories = '{folder}'")
    with (data / "postgresql.conf").open("a") as conf:  # later lines win
        conf.write("\n# tests/postgres.py\n" + "\n".join(lines) + "\n")


def _start(runner: _Runner, folder: Path) -> int:
    """Starts the server on a free port; the port."""
    log = folder / "server.log"
    for _ in range(PORT_TRIES):
        port = _free_port()
        done = runner.run(
            "pg_ctl",
            "start",
            "--wait",
            f"--timeout={WAIT}",
            f"--pgdata={folder / 'data'}",
            f"--log={log}",
            f"--options=-p {port}",
        )
        if done.returncode == 0:
            return port
        logged = log.read_text(errors="replace") if log.exists() else ""
        if "could not bind" not in logged:
            raise PostgresError(f"pg_ctl start failed:\n{_output(done)}\n{logged[-4000:]}")
        log.unlink()  # the port was taken meanwhile: try another
    raise PostgresError(f"no free port found in {PORT_TRIES} tries")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _discard(runner: _Runner, folder: Path) -> None:
    """Stops a server (if one runs) and deletes its folder."""
    if (folder / "data" / "postmaster.pid").exists():
        runner.run(
            "pg_ctl",
            "stop",
            "--wait",
            f"--timeout={WAIT}",
            "--mode=immediate",
            f"--pgdata={folder / 'data'}",
        )
    shutil.rmtree(folder, ignore_errors=True)


def _reap_stale(temp: Path, runner: _Runner) -> None:
    """Discards the folders of our servers whose creator died without stopping them
    (a SIGKILLed test run), so that they do not pile up on a machine."""
    for folder in temp.glob(f"{PREFIX}*-*"):
        creator = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        with contextlib.suppress(OSError):
            if creator.isdigit() and not _alive(int(creator)) and _owned(folder, runner.uid):
                _discard(runner, folder)


def _owned(folder: Path, uid: int) -> bool:
    info = folder.lstat()
    return folder.is_dir() and not folder.is_symlink() and info.st_uid == uid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A SIGKILLed creator stays a zombie until its parent reaps it.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stdout + done.stderr).strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.postgres", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep a server until Ctrl-C")
    parser.add_argument("--databases", type=int, default=20, help="fresh databases to time")
    parser.add_argument("--base", type=Path, help="the folder to start it in (default: /dev/shm)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    with PostgresServer.start(args.base) as server:
        started = time.perf_counter() - began
        print(f"server up in {started * 1000:.0f} ms: {server.url}", flush=True)
        if args.serve:
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
            return 0
        created, dropped = [], []
        for _ in range(args.databases):
            t0 = time.perf_counter()
            url = server.create_database()
            t1 = time.perf_counter()
            server.drop_database(url)
            created.append(t1 - t0)
            dropped.append(time.perf_counter() - t1)
        for what, times in (("create", created), ("drop", dropped)):
            times.sort()
            print(
                f"{what} database: median {times[len(times) // 2] * 1000:.1f} ms, "
                f"max {times[-1] * 1000:.1f} ms over {len(times)}"
            )
        began = time.perf_counter()
    print(f"stopped and deleted in {(time.perf_counter() - began) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
