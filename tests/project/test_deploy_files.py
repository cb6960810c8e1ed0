"""The Dockerfile, the systemd unit and the nginx example agree with the bridge's settings.

Nothing here needs docker, systemd or nginx: the files are read as text, and every
setting they name must be one `bot/settings.py` knows, with the values they rely on.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

from bot.app import EXIT_BAD_TOKEN
from bot.settings import Settings
from tests.harness import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
DOCKERIGNORE = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
UNIT = (ROOT / "examples" / "joinbridge.service").read_text(encoding="utf-8")
NGINX = (ROOT / "examples" / "nginx.conf").read_text(encoding="utf-8")
SETTINGS = {name.upper() for name in Settings.model_fields}
EXIT_CONFIG_ERROR = 2  # bot/cli/run.py: a missing or invalid setting

# NAME=value where NAME looks like one of ours: upper case with an underscore.
_ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)=")


def _default(name: str) -> object:
    return Settings.model_fields[name.lower()].default


def _docker_env() -> dict[str, str]:
    """Every ENV in the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _unit() -> dict[str, list[str]]:
    """The unit's directives; a key may repeat."""
    directives: dict[str, list[str]] = {}
    for line in UNIT.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    return directives


def test_every_setting_the_deploy_files_name_exists() -> None:
    ours = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR"}
    ours |= {"PIP_DISABLE_PIP_VERSION_CHECK"}
    for name, text in (("Dockerfile", DOCKERFILE), ("joinbridge.service", UNIT)):
        named = set(_ASSIGNMENT.findall(text)) - ours
        assert named, f"{name} names no setting"
        assert named <= SETTINGS, f"{name} names unknown settings: {named - SETTINGS}"
    named = set(_ASSIGNMENT.findall(NGINX)) | set(re.findall(r"\b[A-Z]+_[A-Z_]+\b", NGINX))
    assert named <= SETTINGS, f"nginx.conf names unknown settings: {named - SETTINGS}"
    assert "TRUSTED_PROXIES" in named


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions in order, (KEYWORD, arguments), continuation
    lines joined and comments left out."""
    steps = []
    for line in DOCKERFILE.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            steps.append((keyword.upper(), " ".join(arguments.split())))
    return steps


def test_dockerfile_installs_the_dependencies_before_the_code_is_copied(tmp_path: Path) -> None:
    steps = _instructions()
    copied = [(i, arguments.split()[0]) for i, (k, arguments) in enumerate(steps) if k == "COPY"]
    deps, package = (i for i, (k, arguments) in enumerate(steps) if "pip install" in arguments)
    # The dependencies' layer sees pyproject.toml alone, so a change to the code
    # leaves it cached; the package comes after the code, without its dependencies.
    assert [path for i, path in copied if i < deps] == ["pyproject.toml"]
    assert {path for i, path in copied if deps < i < package} == {
        "README.md",
        "bot",
        "handlers",
        "storage",
    }
    assert "pip install -r requirements.txt" in steps[deps][1]
    assert "pip install --no-deps . && pip check" in steps[package][1]
    assert "[dev]" not in DOCKERFILE
    # The command that writes requirements.txt, run here: pyproject's dependencies.
    write = steps[deps][1].split(" && ")[0]
    assert re.fullmatch(r"python -c .+ > requirements\.txt", write), write
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    command = shlex.quote(sys.executable) + write.removeprefix("python")
    subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, check=True, timeout=60)
    with (ROOT / "pyproject.toml").open("rb") as file:
        wanted = tomllib.load(file)["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == wanted


def test_dockerfile_runs_the_package_as_a_user_with_the_database_on_the_volume() -> None:
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE, re.MULTILINE)
    # Numeric, so a runtime can tell it is not root without reading /etc/passwd.
    (user,) = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user  # uid:gid, neither root's 0
    uid, _, gid = user.partition(":")
    assert re.search(rf"^RUN groupadd --system --gid {gid} joinbridge\b", DOCKERFILE, re.MULTILINE)
    assert f"useradd --system --uid {uid} --gid {gid} " in DOCKERFILE
    env = _docker_env()
    (volume,) = re.findall(r'^VOLUME \["([^"]+)"\]', DOCKERFILE, re.MULTILINE)
    assert PurePosixPath(env["DATABASE_PATH"]).parent == PurePosixPath(volume)
    assert f"chown {uid}:{gid} {volume}" in DOCKERFILE
    # The tracker listens on every interface inside the container, on the exposed port.
    assert env["TRACKER_HOST"] == "0.0.0.0"
    assert re.findall(r"^EXPOSE (\d+)", DOCKERFILE, re.MULTILINE) == [env["TRACKER_PORT"]]
    assert re.search(r'^CMD \["python", "-m", "bot"\]$', DOCKERFILE, re.MULTILINE)
    assert "/healthz" in DOCKERFILE


def test_dockerignore_keeps_secrets_and_databases_out_of_the_image() -> None:
    rules = [line.strip() for line in DOCKERIGNORE if line.strip() and not line.startswith("#")]
    # An allow-list: everything is out unless named, and neither .env nor data is named.
    assert rules[0] == "*"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    # LICENSE: the MIT notice goes with every copy, the image's wheel included.
    assert allowed == {"pyproject.toml", "README.md", "LICENSE", "bot", "handlers", "storage"}
    for path in re.findall(r"^COPY (\S+)", DOCKERFILE, re.MULTILINE):
        assert path in allowed, f"COPY {path} is excluded by .dockerignore"


def test_unit_restarts_on_failure_and_stops_gracefully() -> None:
    unit = _unit()
    assert unit["Restart"] == ["on-failure"]
    assert float(unit["RestartSec"][0]) > 0
    # Neither a bad setting nor a rejected token mends itself by restarting.
    assert set(unit["RestartPreventExitStatus"][0].split()) == {
        str(EXIT_CONFIG_ERROR),
        str(EXIT_BAD_TOKEN),
    }
    assert unit["KillSignal"] == ["SIGTERM"]
    grace = _default("shutdown_grace")
    assert isinstance(grace, float)
    assert float(unit["TimeoutStopSec"][0]) >= 2 * grace + 10
    assert unit["ExecStart"][0].endswith("/.venv/bin/joinbridge")
    assert unit["User"][0] not in ("root", "0")
    assert unit["EnvironmentFile"]


def test_unit_is_hardened_and_may_write_only_the_database() -> None:
    unit = _unit()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert unit[key] == [value], key
    (database,) = (v.split("=", 1)[1] for v in unit["Environment"] if v.startswith("DATABASE_"))
    assert unit["ReadWritePaths"] == [str(PurePosixPath(database).parent)]
    assert f"/var/lib/{unit['StateDirectory'][0]}" == unit["ReadWritePaths"][0]


def test_nginx_forwards_the_visitor_to_the_tracker() -> None:
    upstream = re.search(r"upstream \w+ \{\s*server ([\d.]+):(\d+);", NGINX)
    assert upstream is not None
    assert upstream.groups() == (_default("tracker_host"), str(_default("tracker_port")))
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in NGINX
    assert "proxy_set_header X-Real-IP $remote_addr;" in NGINX
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in NGINX
    # The override headers are for server-side callers; a browser must not set them.
    assert 'proxy_set_header X-Adtarget-Client-IP "";' in NGINX
    assert 'proxy_set_header X-Adtarget-Client-User-Agent "";' in NGINX
    # The prefix the proxy serves is the one TRACKER_PUBLIC_URL and the page use.
    public = re.search(r"TRACKER_PUBLIC_URL=(https://[^/\s]+(/\S+))", NGINX)
    assert public is not None
    assert f"location {public.group(2)}/ {{" in NGINX
    assert f"data-tracker becomes\n#   {public.group(1)}\n" in NGINX
