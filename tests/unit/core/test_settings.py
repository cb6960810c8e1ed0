"""Settings: defaults, parsing, and one clear line per bad variable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import Settings, describe_error
from tests.harness import ROOT

TOKEN = "123456:ABC-def_ghi"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("BOT_", "ADTARGET_", "TELEGRAM_", "DATABASE_", "ADMIN_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADTARGET_API_KEY", "atk_live_x")
    settings = Settings()
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert settings.adtarget_api_url == "https://adtarget.io"
    assert settings.database_path == Path("data/joinbridge.db")
    assert settings.default_event_type == "Lead"
    assert settings.admin_ids == ()
    assert settings.send_organic is False


def test_admin_ids_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADTARGET_API_KEY", "k")
    monkeypatch.setenv("ADMIN_IDS", " 1, 22 ,333")
    monkeypatch.setenv("ADTARGET_API_URL", "http://127.0.0.1:9/")
    settings = Settings()
    assert settings.admin_ids == (1, 22, 333)
    assert settings.adtarget_api_url == "http://127.0.0.1:9"


def test_secret_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADTARGET_API_KEY", "atk_live_secretvalue")
    text = repr(Settings())
    assert TOKEN not in text
    assert "secretvalue" not in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "BOT_TOKEN is required"),
        ({"BOT_TOKEN": "nope"}, "BOT_TOKEN is invalid"),
        ({"DEFAULT_EVENT_TYPE": "Purchase"}, "DEFAULT_EVENT_TYPE is invalid"),
        ({"ADMIN_IDS": "12,abc"}, "ADMIN_IDS is invalid: must be comma-separated"),
        ({"ADMIN_IDS": "12,-1001234567890"}, "ADMIN_IDS is invalid: -1001234567890 is not a user"),
        ({"ADMIN_IDS": "0"}, "ADMIN_IDS is invalid: 0 is not a user id"),
        ({"ADTARGET_API_URL": "adtarget.io"}, "ADTARGET_API_URL is invalid"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8, localhost"}, "TRUSTED_PROXIES is invalid"),
        ({"TRACKER_ALLOWED_ORIGINS": "*"}, "TRACKER_ALLOWED_ORIGINS is invalid: '*' is not"),
        ({"TRACKER_ALLOWED_ORIGINS": "https://a.example, null"}, "TRACKER_ALLOWED_ORIGINS"),
    ],
)
def test_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    base = {"BOT_TOKEN": TOKEN, "ADTARGET_API_KEY": "k"}
    if not env:
        base.pop("BOT_TOKEN")
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_error(caught.value)
    assert expected in message
    assert "nope" not in message  # the bad token itself is never echoed


def test_trusted_proxies_default_to_loopback_and_setting_them_replaces_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADTARGET_API_KEY", "k")
    assert [str(n) for n in Settings().trusted_proxies] == ["127.0.0.0/8", "::1/128"]
    monkeypatch.setenv("TRUSTED_PROXIES", "127.0.0.1")
    assert [str(n) for n in Settings().trusted_proxies] == ["127.0.0.1/32"]


def test_risky_but_legal_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # doctor warns about each of these (tests/e2e/test_doctor.py); the bridge runs with them.
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADTARGET_API_KEY", "k")
    monkeypatch.setenv("ADMIN_IDS", "")
    monkeypatch.setenv("TRUSTED_PROXIES", "0.0.0.0/0, ::/0")
    monkeypatch.delenv("TRACKER_PUBLIC_URL", raising=False)
    settings = Settings()
    assert settings.admin_ids == ()
    assert [str(n) for n in settings.trusted_proxies] == ["0.0.0.0/0", "::/0"]
    assert settings.public_tracker_url == "http://127.0.0.1:8080"


def test_missing_setting_exits_2_without_traceback(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "BOT_TOKEN is required" in result.stderr


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = {
        line.lstrip("# ").split("=", 1)[0]
        for line in text.splitlines()
        if "=" in line and line.lstrip("# ").split("=", 1)[0].isupper()
    }
    expected = {name.upper() for name in Settings.model_fields}
    assert expected - listed == set(), "settings missing from .env.example"
    assert listed - expected == set(), ".env.example names unknown settings"


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "BOT_TOKEN": TOKEN,
        "ADTARGET_API_KEY": "k",
        "TELEGRAM_API_URL": "http://127.0.0.1:9",
        "ADTARGET_API_URL": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("{tmp}", "is a directory"),
        ("{tmp}/a-file/bridge.db", "is not a directory"),
    ],
)
def test_an_unusable_database_path_is_one_line_and_exit_2(
    tmp_path: Path, where: str, said: str
) -> None:
    (tmp_path / "a-file").write_text("")
    result = _start(tmp_path, DATABASE_PATH=where.format(tmp=tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert said in result.stderr


def test_a_tracker_address_that_cannot_be_used_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = _start(tmp_path, DATABASE_PATH=str(tmp_path / "b.db"), TRACKER_PORT=str(port))
    unknown = _start(
        tmp_path, DATABASE_PATH=str(tmp_path / "b.db"), TRACKER_HOST="no-such-host.invalid"
    )
    for result, said in ((taken, "is in use"), (unknown, "does not resolve")):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert said in result.stderr


def test_database_url_selects_postgresql_and_is_never_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADTARGET_API_KEY", "atk_live_x")
    assert Settings().database_url is None  # the SQLite default
    monkeypatch.setenv("DATABASE_URL", "  ")
    assert Settings().database_url is None
    monkeypatch.setenv("DATABASE_URL", "postgresql://jb:s3cret-pw@db.internal:5432/jb")
    url = Settings().database_url
    assert url is not None
    assert url.get_secret_value() == "postgresql://jb:s3cret-pw@db.internal:5432/jb"
    assert "s3cret-pw" not in repr(Settings())
    monkeypatch.setenv("DATABASE_URL", "mysql://jb:s3cret-pw@db.internal/jb")
    with pytest.raises(ValidationError) as raised:
        Settings()
    line = describe_error(raised.value)
    assert line.startswith("DATABASE_URL is invalid: must be a postgresql:// URL")
    assert "s3cret-pw" not in line
