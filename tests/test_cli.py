"""The command dispatcher: usage, unknown commands, and that each tool's module loads lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bot import cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == cli.EXIT_USAGE
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_bad_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--no-such-flag"]) == cli.EXIT_USAGE
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_does_not_import_the_bridge() -> None:
    probe = "import sys; from bot import cli; cli.main(['--help']); print('aiogram' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip().endswith("False")
