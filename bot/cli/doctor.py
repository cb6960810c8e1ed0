"""`joinbridge doctor`: check a real setup and print a checklist, one line per
check with a mark, and under anything that is not fine the fix. The checks are
in bot/doctor/checkup.py; this loads the settings and prints.

Exit status: 0 only when every line passed, 1 when any line failed, warned or
could not be checked (a deploy script must not go on past a warning), 2 a bad
setting (as every command).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from bot import logs
from bot.cli.run import secrets
from bot.doctor.checklist import Check, Status, fail
from bot.settings import Settings, describe_error

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

ENV_FILE = Path(".env")
MARKS = {Status.OK: "✓", Status.WARN: "!", Status.FAIL: "✗", Status.SKIP: "-"}
ASCII_MARKS = {Status.OK: "+", Status.WARN: "!", Status.FAIL: "x", Status.SKIP: "-"}
# Typography of the messages, for a terminal that cannot show it.
ASCII_TEXT = str.maketrans({"→": "->", "…": "...", "“": '"', "”": '"', "—": "-"})


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """`doctor` takes no arguments: it checks what `joinbridge` would run with."""


class Printer:
    """Checklist lines on `out`, with marks it can encode and no secret ever."""

    def __init__(self, out: TextIO, secrets: list[str]) -> None:
        self._out = out
        self._unicode = _can_encode(out, "".join(MARKS.values()) + "→…“”")
        if not self._unicode and isinstance(out, io.TextIOWrapper):
            out.reconfigure(errors="replace")  # a channel title in any script still prints
        # Only the scrubbing is borrowed from the log formatter.
        self._redactor = logs.RedactingFormatter(None, secrets)
        self.counts = dict.fromkeys(Status, 0)

    def line(self, check: Check) -> None:
        self.counts[check.status] += 1
        marks = MARKS if self._unicode else ASCII_MARKS
        text = f"{marks[check.status]} {check.name}: {check.detail}"
        if check.fix and check.status in (Status.FAIL, Status.WARN):
            text += f"\n    fix: {check.fix}"
        self._print(text)

    def summary(self) -> None:
        counts = self.counts
        parts = [f"{counts[Status.OK]} passed", f"{counts[Status.WARN]} warning(s)"]
        parts.append(f"{counts[Status.FAIL]} failed")
        if counts[Status.SKIP]:
            parts.append(f"{counts[Status.SKIP]} not checked")
        self._print("\n" + ", ".join(parts))

    def _print(self, text: str) -> None:
        text = self._redactor.redact(text)
        if not self._unicode:
            text = text.translate(ASCII_TEXT)
        print(text, file=self._out, flush=True)


def _can_encode(out: TextIO, text: str) -> bool:
    try:
        text.encode(out.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as error:
        printer = Printer(sys.stdout, [])
        printer.line(
            fail(
                "settings",
                describe_error(error),
                f"set it in the environment or in {ENV_FILE.resolve()} (.env.example lists"
                " every setting).",
            )
        )
        return EXIT_USAGE
    found = secrets(settings)
    # Library warnings go to stderr, scrubbed like the bridge's own logs.
    logs.configure("ERROR", found)
    printer = Printer(sys.stdout, found)
    return asyncio.run(_check(settings, printer))


async def _check(settings: Settings, printer: Printer) -> int:
    # aiogram is imported here, after the settings are known good (as `run` does).
    from bot.doctor.checkup import describe_settings, run_checks
    from bot.doctor.local import env_file

    printer.line(describe_settings(settings, ENV_FILE))
    if (env_mode := env_file(ENV_FILE)) is not None:
        printer.line(env_mode)
    async for check in run_checks(settings):
        printer.line(check)
    printer.summary()
    # Marks tell failures from warnings; the status only says whether all is well.
    all_passed = printer.counts[Status.OK] == sum(printer.counts.values())
    return EXIT_OK if all_passed else EXIT_FAILED
