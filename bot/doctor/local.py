"""The doctor's checks on this machine: who may read `.env`, the database
(writable, migrated, sound) and the tracker's port. They only look: the database
is opened read-only and migrated by nobody but the bridge; the port is bound for
an instant and let go."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sqlite3
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.doctor.checklist import Check, fail, ok, warn
from storage import channels
from storage.channels import Channel
from storage.db import latest_version, open_readonly
from storage.inspection import quick_check, schema_state

ENV_FILE = ".env"
DATABASE = "database"
TRACKER = "tracker port"
WRITABLE_FIX = (
    "let the user that runs the bridge write there (chown / chmod), or set DATABASE_PATH to a"
    " writable place."
)


@dataclass(frozen=True, slots=True)
class DatabaseFindings:
    """What the doctor found in the database: its checklist line, and the channels
    the other checks go on with."""

    check: Check
    # The channels it tracks; None when they could not be read, and then why.
    channels: list[Channel] | None
    unread: str = "not checked: the database check failed"


def env_file(path: Path) -> Check | None:
    """Whether other users may read (or change) the settings file, which holds the
    bot token and the AdTarget key; None when there is none. Only looked at: the
    file is the owner's, and the umask the bridge runs under covers only the
    files it creates itself."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # no .env here: the settings came from the environment alone
    if not mode & 0o077:
        return ok(ENV_FILE, f"{path.resolve()} is for its owner only (mode {mode:04o})")
    readers = _who(mode, 0o040, 0o004)
    writers = _who(mode, 0o020, 0o002)
    what = [f"{readers} can read the bot token and the AdTarget key in it"] if readers else []
    # Whoever can change it can point TELEGRAM_API_URL at their own server.
    what += [f"{writers} can change it"] if writers else []
    return warn(
        ENV_FILE,
        f"{path.resolve()} has mode {mode:04o}: " + ("; ".join(what) or "others have rights on it"),
        f"chmod 600 {path}",
    )


def _who(mode: int, group_bit: int, others_bit: int) -> str:
    named = [("its group", group_bit), ("every user of this machine", others_bit)]
    return " and ".join(name for name, bit in named if mode & bit)


def running_bridge_pid(database_path: Path) -> int | None:
    """The pid of a bridge holding this database's instance lock (bot/app.py
    instance_lock), 0 when its pid is unreadable; None when no bridge holds it."""
    try:
        fd = os.open(f"{database_path}.lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _bridge(pid: int) -> str:
    return f"a bridge is running (pid {pid})" if pid else "a bridge is running"


def _cannot_write(directory: Path) -> str | None:
    """Why nothing can be created in `directory`, or None when it can.

    A real file is created and removed: SQLite needs to create its -wal and -shm
    files there, and permission bits alone do not tell (root, read-only mounts,
    ACLs).
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".joinbridge-doctor-", dir=directory)
    except OSError as error:
        return error.strerror or str(error)
    os.close(fd)
    os.unlink(probe)
    return None


def _directory_problem(path: Path) -> tuple[str | None, str]:
    """(a problem with the database's directory, or None; a note when it is fine)."""
    directory = path.parent
    if directory.is_dir():
        why = _cannot_write(directory)
        return (f"{directory} is not writable: {why}" if why else None), ""
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create {directory}: {ancestor} is not a directory", ""
    why = _cannot_write(ancestor)
    if why:
        return f"cannot create {directory}: {ancestor} is not writable: {why}", ""
    return None, f"{directory} will be created at start"


def _file_problem(path: Path) -> DatabaseFindings | None:
    """The verdict when the file system alone decides it; None: look inside."""
    if path.is_dir():
        return DatabaseFindings(
            fail(
                DATABASE,
                f"DATABASE_PATH {path} is a directory",
                "set DATABASE_PATH to a file, like data/joinbridge.db.",
            ),
            None,
        )
    problem, note = _directory_problem(path)
    if problem:
        return DatabaseFindings(fail(DATABASE, problem, WRITABLE_FIX), None)
    if not path.exists():
        where = note or f"{path.parent} is writable"
        return DatabaseFindings(
            ok(DATABASE, f"{path} will be created at first start ({where})"), []
        )
    try:
        with path.open("r+b"):  # opened for writing, nothing written
            pass
    except OSError as error:
        return DatabaseFindings(
            fail(DATABASE, f"{path} is not writable: {error.strerror}", WRITABLE_FIX), None
        )
    return None


def database_path_problem(path: Path) -> Check | None:
    """The failed check when the file system alone rules the path out (a directory,
    a parent that cannot be created or written), else None. The bridge asks this at
    start, so a bad DATABASE_PATH is one line there too, not a traceback."""
    verdict = _file_problem(path)
    return verdict.check if verdict is not None and verdict.channels is None else None


async def database(path: Path) -> DatabaseFindings:
    if (verdict := _file_problem(path)) is not None:
        return verdict
    try:
        return await _inspect(path)
    except sqlite3.Error as error:
        return DatabaseFindings(
            fail(
                DATABASE,
                f"{path} cannot be read as an SQLite database: {error}",
                "point DATABASE_PATH at the bridge's own database, or restore a backup there.",
            ),
            None,
        )


async def _inspect(path: Path) -> DatabaseFindings:
    latest = latest_version()
    db = await open_readonly(path)
    try:
        state = await schema_state(db)
        if state.version is None and state.tables:
            return DatabaseFindings(
                fail(
                    DATABASE,
                    f"{path} holds {state.tables} tables but no Joinbridge schema",
                    "point DATABASE_PATH at the bridge's own database, or move this file away.",
                ),
                None,
            )
        version = state.version or 0
        if version > latest:
            return DatabaseFindings(
                fail(
                    DATABASE,
                    f"{path} has schema version {version}, newer than this Joinbridge knows"
                    f" ({latest}): a newer release wrote it",
                    "run the Joinbridge release that wrote it, or restore a backup made with"
                    " this one.",
                ),
                None,
            )
        problems = await quick_check(db)
        if problems != ["ok"]:
            return DatabaseFindings(
                fail(
                    DATABASE,
                    f"{path} is damaged: quick_check says {'; '.join(problems)}",
                    "stop the bridge and restore the latest backup (joinbridge backup).",
                ),
                None,
            )
        unread = ""
        try:
            tracked = await channels.list_all(db) if version else []
        except sqlite3.Error:  # an older schema may lack columns list_all reads
            tracked = None
            unread = "not checked: the database is migrated at start; run doctor again then"
    finally:
        await db.close()
    if version == latest:
        schema = f"schema version {version}, the latest"
    else:
        schema = f"will migrate {version}→{latest} at start"
    detail = f"{path}: writable, {schema}, quick_check ok"
    pid = running_bridge_pid(path)
    if pid is not None:
        detail += f"; {_bridge(pid)}"
    return DatabaseFindings(ok(DATABASE, detail), tracked, unread)


def tracker_port(host: str, port: int, database_path: Path) -> Check:
    where = f"{host}:{port}"
    if port == 0:
        return ok(TRACKER, f"TRACKER_PORT=0: the system picks a free port on {host} at start")
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        return fail(
            TRACKER,
            f"TRACKER_HOST {host!r} does not resolve: {error.strerror}",
            "set TRACKER_HOST to an address of this machine, like 127.0.0.1 or 0.0.0.0.",
        )
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        try:
            _bind(family, kind, proto, address)
        except OSError as error:
            return _bind_failed(error, where, port, database_path)
    return ok(TRACKER, f"{where} is free")


def _bind(family: int, kind: int, proto: int, address: tuple[Any, ...]) -> None:
    with socket.socket(family, kind, proto) as probe:
        # As asyncio binds the tracker: SO_REUSEADDR (a TIME_WAIT leftover does not
        # block a listener) and IPv6 sockets for IPv6 only.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(address)


def _bind_failed(error: OSError, where: str, port: int, database_path: Path) -> Check:
    if error.errno == errno.EADDRINUSE:
        pid = running_bridge_pid(database_path)
        if pid is not None:
            return ok(TRACKER, f"{where} is in use: {_bridge(pid)} and holds the port")
        return fail(
            TRACKER,
            f"{where} is in use by another program",
            f"stop the program listening there (`ss -ltnp 'sport = :{port}'` names it), or set"
            " TRACKER_PORT to a free port.",
        )
    if error.errno == errno.EACCES:
        return fail(
            TRACKER,
            f"listening on {where} needs privileges this user lacks",
            "set TRACKER_PORT above 1023 and let your reverse proxy face the world.",
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return fail(
            TRACKER,
            f"{where}: {error.strerror}",
            "set TRACKER_HOST to an address of this machine, like 127.0.0.1 or 0.0.0.0.",
        )
    return fail(
        TRACKER,
        f"cannot listen on {where}: {error.strerror or error}",
        "set TRACKER_HOST / TRACKER_PORT to an address and port this machine can listen on.",
    )
