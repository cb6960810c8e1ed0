"""The command dispatcher: usage, unknown commands, and that each tool's module loads lazily."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bot import cli
from tests.harness import ROOT


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


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def test_version_is_pyprojects(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--version", "-V"):
        assert cli.main([flag]) == 0
        assert capsys.readouterr().out == f"joinbridge {_project()['version']}\n"


def test_the_joinbridge_command_is_installed_and_is_python_m_bot() -> None:
    assert _project()["scripts"] == {"joinbridge": "bot.cli:entry"}
    # The venv the tests run in was installed from this pyproject (make's stamps).
    script = Path(sys.executable).parent / "joinbridge"
    for command in ([str(script)], [sys.executable, "-m", "bot"]):
        version = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, check=True, timeout=60
        )
        assert version.stdout == f"joinbridge {_project()['version']}\n"
        unknown = subprocess.run(
            [*command, "frobnicate"], capture_output=True, text=True, check=False, timeout=60
        )
        assert unknown.returncode == cli.EXIT_USAGE
        assert "usage: joinbridge [command]" in unknown.stderr


def test_the_entry_point_keeps_new_files_private() -> None:
    # Both the command and `python -m bot` start in cli.entry, which sets the umask.
    probe = "import os; from bot import cli; cli.entry(); print(oct(os.umask(0)))"
    result = subprocess.run(
        [sys.executable, "-c", probe, "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.splitlines()[-1] == "0o77"
