"""`joinbridge backup <file>`: a consistent copy of the database, even while the
bridge runs. The copying itself is in storage/backup.py; this parses and prints.

Exit status: 0 copied and verified, 2 bad arguments or no database, 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from storage.backup import BackupError, backup, check_target

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("file", type=Path, help="where to write the copy (a new file)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument(
        "--database",
        type=Path,
        default=None,
        help="the database to copy (default: DATABASE_PATH from the environment or .env)",
    )


def run(args: argparse.Namespace) -> int:
    source = _source(args.database)
    target: Path = args.file
    if not source.is_file():
        print(f"joinbridge backup: database: {source} does not exist", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_target(target, force=args.force)
        if target.resolve() == source.resolve():
            raise ValueError("is the database itself")
    except ValueError as error:
        print(f"joinbridge backup: file: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = backup(source, target, force=args.force)
    except (BackupError, OSError) as error:
        print(f"joinbridge backup: failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"backup of {source} written to {result.path}")
    print(f"size: {_size(result.size_bytes)}; integrity_check: ok")
    width = max((len(name) for name in result.rows), default=0)
    for name, count in result.rows.items():
        print(f"  {name:<{width}}  {count:>10,}")
    return EXIT_OK


def _source(database: Path | None) -> Path:
    if database is not None:
        return database
    from bot.cli.run import load_settings  # exits 2 with a clear line when settings are bad

    return load_settings().database_path


def _size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{size} bytes"
