"""The Makefile as a user meets it: what `make run` installs (the runtime only), what
the checks add, that nothing is installed twice, and `make sandbox` left with Ctrl-C
in a real terminal (a pseudo-terminal here).

The install plans are read with `make -n` (which runs nothing) on a copy of the
Makefile and pyproject.toml, with the stamps' ages set as each story leaves them.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.test_sandbox import sandbox_env
from tests.harness import ROOT

START = 120.0  # seconds; generous, the machine is shared
CHECKS = ("test", "lint", "typecheck", "unit", "bench")
RUNTIME = ".venv/.installed-runtime"
DEV = ".venv/.installed-dev"


def _make() -> str:
    found = shutil.which("make")
    assert found is not None, "make is not installed"
    return found


def _make_env(base: dict[str, str] | None = None) -> dict[str, str]:
    # Under `make test`, make's own variables (and any VAR=value given to it) would
    # reach this make through MAKEFLAGS.
    env = dict(os.environ if base is None else base)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(name, None)
    return env


def _checkout(tmp_path: Path, *stamps: str) -> Path:
    """A copy of the Makefile and pyproject.toml; `stamps` made after it, in order."""
    folder = tmp_path / "clone"
    (folder / ".venv").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, folder / name)
    then = time.time() - 1000
    os.utime(folder / "pyproject.toml", (then, then))
    for age, stamp in enumerate(stamps, start=1):
        (folder / stamp).touch()
        os.utime(folder / stamp, (then + 10 * age, then + 10 * age))
    return folder


def _plan(folder: Path, target: str) -> list[str]:
    """The commands `make <target>` would run in `folder`."""
    done = subprocess.run(
        [_make(), "--no-print-directory", "-n", target],
        cwd=folder,
        env=_make_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.splitlines()


def _installs(commands: list[str]) -> list[str]:
    """The `pip install` commands that install the project (not pip's own upgrade)."""
    return [c for c in commands if "pip install" in c and "--upgrade pip" not in c]


def test_a_fresh_make_run_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    clone = _checkout(tmp_path)
    for target in ("run", "sandbox"):
        plan = _plan(clone, target)
        assert any(c.endswith(" -m venv .venv") for c in plan), plan
        assert _installs(plan) == [".venv/bin/pip install --quiet -e ."], plan
        assert not any("[dev]" in c for c in plan), plan
    assert _plan(clone, "run")[-1] == ".venv/bin/joinbridge"
    assert ".venv/bin/joinbridge sandbox" in _plan(clone, "sandbox")[-1]
    for target in CHECKS:
        assert _installs(_plan(clone, target)) == [
            ".venv/bin/pip install --quiet -e .",
            ".venv/bin/pip install --quiet -e '.[dev]'",
        ], target


def test_make_run_after_make_test_installs_nothing(tmp_path: Path) -> None:
    clone = _checkout(tmp_path, RUNTIME, DEV)
    assert _plan(clone, "run") == [".venv/bin/joinbridge"]
    for target in CHECKS:
        assert _installs(_plan(clone, target)) == [], target


def test_make_test_after_make_run_adds_only_the_dev_extras(tmp_path: Path) -> None:
    clone = _checkout(tmp_path, RUNTIME)
    assert _plan(clone, "run") == [".venv/bin/joinbridge"]
    for target in CHECKS:
        plan = _plan(clone, target)
        assert _installs(plan) == [".venv/bin/pip install --quiet -e '.[dev]'"], target
        assert not any(" -m venv " in c for c in plan), plan


def test_a_changed_pyproject_reinstalls(tmp_path: Path) -> None:
    clone = _checkout(tmp_path, RUNTIME, DEV)
    (clone / "pyproject.toml").touch()
    assert _installs(_plan(clone, "run")) == [".venv/bin/pip install --quiet -e ."]
    assert len(_installs(_plan(clone, "lint"))) == 2


# Makes the pseudo-terminal the controlling terminal of a new session, as a login
# shell's terminal is, and runs the command in its foreground with SIGINT's default
# action, as a shell starts it (a test run in the background may inherit it ignored).
_IN_TERMINAL = (
    "import fcntl, os, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"
)


def test_make_sandbox_left_with_ctrl_c_exits_0(tmp_path: Path) -> None:
    # Ready to run: the stamp is newer than pyproject.toml, and the venv is this one.
    clone = _checkout(tmp_path, RUNTIME)
    venv = Path(sys.executable).parent
    command = [_make(), "--no-print-directory", f"BIN={venv}", "sandbox", "ARGS=--port 0"]
    terminal, user_side = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", _IN_TERMINAL, *command],
        cwd=clone,
        env=_make_env(sandbox_env(tmp_path)),
        stdin=user_side,
        stdout=user_side,
        stderr=user_side,
        start_new_session=True,
    )
    os.close(user_side)
    output = b""
    try:
        output = _read_until(terminal, b"Sandbox ready: tracker on http://127.0.0.1:", START)
        os.write(terminal, b"\x03")  # Ctrl-C, as typed
        output += _read_until(terminal, None, 60.0)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:  # a failure: end make; the sandbox gets SIGHUP
            process.kill()
            process.wait()
        os.close(terminal)
    text = output.decode(errors="replace")
    assert status == 0, text
    after = text[text.index("Sandbox ready") :]
    assert "Stopping the sandbox." in after
    assert "Error" not in after
    assert "Traceback" not in text


def _read_until(terminal: int, wanted: bytes | None, seconds: float) -> bytes:
    """What the terminal shows until `wanted` appears (None: until it closes)."""
    output = b""
    deadline = time.monotonic() + seconds
    while wanted is None or wanted not in output:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"not seen within {seconds} s: {wanted!r}\n{output.decode()}"
        readable, _, _ = select.select([terminal], [], [], remaining)
        if not readable:
            continue
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            chunk = b""
        if not chunk:
            assert wanted is None, f"output ended before {wanted!r}:\n{output.decode()}"
            return output
        output += chunk
    return output
