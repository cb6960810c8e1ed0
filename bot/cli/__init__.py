"""`joinbridge [command]` (or `python -m bot [command]`): the bridge itself, and the
one-shot tools beside it.

Each command lives in its own module, imported only when asked for, so that
`python -m bot doctor` does not pay for what `python -m bot` needs and a typo
in one tool cannot break the others. A command module exposes
`add_arguments(parser)` and `run(args) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name -> (module, one-line help). `run` is the default when no command is given.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bot.cli.run", "run the bridge until SIGTERM or SIGINT (the default)"),
    "sandbox": ("bot.cli.sandbox", "try the bridge against built-in simulators, no token needed"),
    "doctor": ("bot.cli.doctor", "check a real setup: token, AdTarget key, channels, database"),
    "backup": ("bot.cli.backup", "write a consistent copy of the database, even while it runs"),
    "forget": ("bot.cli.forget", "erase one Telegram user's joins and visits"),
    "lead": ("bot.cli.leads", "show what AdTarget and the bridge hold for one Telegram user"),
    "fire": ("bot.cli.leads", "queue a follow-up event for an existing lead"),
    "value": ("bot.cli.leads", "queue a value for a conversion awaiting manual input"),
    "migrate-to-postgres": (
        "bot.cli.migrate",
        "move the SQLite database into an empty PostgreSQL database (one way)",
    ),
}

EXIT_USAGE = 2
# The distribution's name: `[project] name` in pyproject.toml, whose `version` is the
# one `--version` prints.
DISTRIBUTION = "joinbridge"


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser, command: str) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(command: str) -> CommandModule:
    module_name, _ = COMMANDS[command]
    return cast(CommandModule, importlib.import_module(module_name))


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: joinbridge [command] [arguments]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "`joinbridge <command> --help` shows a command's arguments;"]
    lines += ["`joinbridge --version` the version."]
    return "\n".join(lines)


def version() -> str:
    """The installed package's version: pyproject.toml's, as pip recorded it."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never `pip install`ed
        return "unknown (not installed: pip install -e .)"


def entry() -> int:
    """The `joinbridge` command and `python -m bot`: the process starts here."""
    # Set once, where the process starts and before any command creates a file: the
    # database and its -wal, -shm and .lock files, backups, the data directory itself.
    # They hold visitors' IPs and click ids; only the bridge's own user may read them
    # (files 0600, directories 0700). Not in main(), which tests call in-process.
    os.umask(0o077)
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:
        arguments = ["run"]
    command = arguments[0]
    if command in ("-h", "--help", "help"):
        print(usage())
        return 0
    if command in ("-V", "--version"):
        print(f"{DISTRIBUTION} {version()}")
        return 0
    if command not in COMMANDS:
        print(f"joinbridge: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    # Only the asked-for command's module is imported, so one tool never pays
    # for another's imports (aiogram alone takes seconds).
    module = _load(command)
    parser = argparse.ArgumentParser(prog=f"joinbridge {command}", description=COMMANDS[command][1])
    module.add_arguments(parser, command)
    try:
        args = parser.parse_args(arguments[1:])
    except SystemExit as exit_:  # argparse already printed the usage and the reason
        return 0 if exit_.code == 0 else EXIT_USAGE
    args.command = command
    return module.run(args)
