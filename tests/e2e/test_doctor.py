"""`python -m bot doctor` as a child process against the loopback fakes: a good
setup passes every line, and each broken part fails (or warns) on its own line
with the fix; the exit status is 0 only when every line passed."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.simulators.adtarget import FakeAdTarget
from bot.simulators.telegram import FakeTelegram
from storage.db import latest_version, open_database
from tests.harness import (
    CHANNEL_ID,
    CHANNEL_TITLE,
    OWNER,
    ROOT,
    RunningBridge,
    bridge_env,
    bridge_settings,
)

# doctor's SQLite-file lines; on PostgreSQL: test_doctor_postgres.py.
pytestmark = pytest.mark.one_engine


ADTARGET_CHANNEL = "ch_test"
NO_RIGHT = -1001000000001
PUBLIC = -1001000000002
UNMAPPED = -1001000000003
DEMOTED = -1001000000004
# What a deployed bridge has set; a test unsets one by giving it as "".
DEPLOYED = {"TRACKER_PUBLIC_URL": "https://track.example.com", "ADMIN_IDS": str(OWNER)}


@dataclass
class Ran:
    status: int
    out: str
    err: str

    def line(self, start: str) -> str:
        """The one output line that starts with `start` (a mark and a check's name)."""
        found = [line for line in self.out.splitlines() if line.startswith(start)]
        assert len(found) == 1, f"{start!r} in:\n{self.out}"
        return found[0]

    def fix_after(self, start: str) -> str:
        lines = self.out.splitlines()
        index = lines.index(self.line(start))
        assert lines[index + 1].startswith("    fix: "), self.out
        return lines[index + 1]


async def doctor(env: dict[str, str], cwd: Path, encoding: str = "utf-8") -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "doctor",
        cwd=cwd,  # the test's folder: no .env there
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "PYTHONIOENCODING": encoding,
            **DEPLOYED,
            **env,
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    ran = Ran(process.returncode, out.decode(encoding), err.decode(errors="replace"))
    # Whatever happened, no secret was printed.
    for secret in (FakeAdTarget.API_KEY, env.get("BOT_TOKEN", "")):
        assert not secret or secret not in ran.out + ran.err
    return ran


def remote_channel(chat_id: int, channel_id: str, title: str) -> dict[str, object]:
    return {"channelId": channel_id, "telegramChannelId": str(chat_id), "title": title}


@pytest.fixture
async def mapped() -> AsyncIterator[FakeAdTarget]:
    """AdTarget whose site holds the test channel and the problem channels but one."""
    channels = [
        remote_channel(CHANNEL_ID, ADTARGET_CHANNEL, CHANNEL_TITLE),
        remote_channel(NO_RIGHT, "ch_no_right", "No Right"),
        remote_channel(PUBLIC, "ch_public", "Public"),
        remote_channel(DEMOTED, "ch_demoted", "Demoted"),
    ]
    fake = FakeAdTarget(channels=channels)
    await fake.start()
    yield fake
    await fake.stop()


async def run_bridge_once(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget, extra: tuple[int, ...] = ()
) -> dict[str, str]:
    """Run the real bridge until it tracks the test channel (and `extra` channels),
    stop it, and return the environment it ran with."""
    running = RunningBridge(bridge_settings(tmp_path, telegram, adtarget))
    await running.start()
    await running.track_channel(telegram)
    for chat_id in extra:
        await running.track_channel(telegram, chat_id)
    assert await running.stop() == 0
    return bridge_env(tmp_path, telegram, adtarget)


async def test_a_good_setup_passes_every_line(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    env = await run_bridge_once(tmp_path, telegram, mapped)
    ran = await doctor(env, tmp_path)
    assert ran.status == 0, ran.out + ran.err
    checks = [line for line in ran.out.splitlines() if line and not line[0].isdigit()]
    assert all(line.startswith("✓ ") for line in checks), ran.out
    assert ran.line("✓ settings: loaded from the environment")
    assert ran.line("✓ public tracker URL: the landing snippet calls https://track.example.com")
    assert ran.line("✓ admins: ADMIN_IDS: 1 user(s) get the alerts")
    assert ran.line("✓ trusted proxies: TRUSTED_PROXIES: 127.0.0.0/8, ::1/128")
    assert ran.line("✓ bot token: @joinbridge_test_bot (id 123456)")
    updates = ran.line("✓ chat_member updates: requested in getUpdates' allowed_updates")
    assert "Telegram delivers them now" in updates  # the bridge asked for them
    assert ran.line("✓ AdTarget key: accepted; the site has 4 channel(s)")
    database = ran.line("✓ database: ")
    assert f"schema version {latest_version()}, the latest, quick_check ok" in database
    label = f"channel “{CHANNEL_TITLE}” ({CHANNEL_ID})"
    assert ran.line(f"✓ {label} rights: administrator with Invite users via link")
    assert ran.line(f"✓ {label} visibility: private")
    assert ran.line(f"✓ {label} event: joins are reported as Lead (DEFAULT_EVENT_TYPE)")
    assert ran.line(f"✓ {label} on AdTarget: AdTarget channel {ADTARGET_CHANNEL}")
    assert ran.line("✓ tracker port: TRACKER_PORT=0")
    assert ran.out.rstrip().endswith("13 passed, 0 warning(s), 0 failed")
    assert ran.err == ""


async def test_without_utf8_the_marks_are_ascii(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    ran = await doctor(bridge_env(tmp_path, telegram, adtarget), tmp_path, encoding="ascii")
    assert ran.status == 1, ran.out + ran.err  # the warning below is not all well
    assert ran.line("+ bot token: @joinbridge_test_bot")
    # No database yet and so no channel: a warning.
    assert "will be created at first start" in ran.line("+ database: ")
    assert ran.line("! channels: no channel is tracked yet")
    assert "add the bot as an admin to your channel" in ran.fix_after("! channels:")
    assert ran.out.isascii()


async def test_a_rejected_bot_token_fails_its_line_and_what_needs_it(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    env = await run_bridge_once(tmp_path, telegram, adtarget)
    telegram.reject_token()  # Telegram answers 401, as for a revoked token
    ran = await doctor(env, tmp_path)
    assert ran.status == 1
    assert ran.line("✗ bot token: BotFather token is wrong or revoked: Telegram answered 401")
    assert "@BotFather" in ran.fix_after("✗ bot token:")
    assert ran.line("- chat_member updates: not checked: the bot token check failed")
    label = f"channel “{CHANNEL_TITLE}” ({CHANNEL_ID})"
    assert ran.line(f"- {label} rights: not checked")
    assert ran.line("✓ AdTarget key: accepted")  # the other lines still run


async def test_unreachable_telegram_says_so(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    with socket.socket() as closed:  # a port nobody listens on once closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = bridge_env(tmp_path, telegram, adtarget, telegram_api_url=f"http://127.0.0.1:{port}")
    ran = await doctor(env, tmp_path)
    assert ran.status == 1
    line = ran.line("✗ bot token: Telegram is unreachable at http://127.0.0.1:")
    assert "TELEGRAM_API_URL" in ran.fix_after("✗ bot token:"), line


async def test_a_webhook_and_allowed_updates_without_chat_member_warn(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # Another program set a webhook (its path carries a secret) asking for messages only.
    telegram.set_webhook("https://hooks.example.com/hook/s3cret-path")
    telegram.allowed_updates = ["message", "callback_query"]
    ran = await doctor(bridge_env(tmp_path, telegram, adtarget), tmp_path)
    assert ran.status == 1, ran.out  # warnings only, but not ready as it stands
    line = ran.line("! chat_member updates: a webhook is set (https://hooks.example.com/…)")
    assert "409 Conflict" in line
    assert "Telegram drops chat_member updates for now" in line
    assert "asked only for message, callback_query" in line
    assert "deleteWebhook" in ran.fix_after("! chat_member updates:")
    assert "s3cret" not in ran.out


async def test_a_rejected_or_unpaid_adtarget_key_fails(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    env = await run_bridge_once(tmp_path, telegram, mapped)
    mapped.revoke_key()
    revoked = await doctor(env, tmp_path)
    assert revoked.status == 1
    assert revoked.line("✗ AdTarget key: the key is wrong or revoked: AdTarget answered HTTP 401")
    assert "ADTARGET_API_KEY" in revoked.fix_after("✗ AdTarget key:")
    label = f"channel “{CHANNEL_TITLE}” ({CHANNEL_ID})"
    assert revoked.line(f"- {label} on AdTarget: not checked")
    assert revoked.line(f"✓ {label} rights:")

    mapped.set_key(FakeAdTarget.API_KEY)
    mapped.fail(402, "SUBSCRIPTION_INACTIVE", "billing paused")
    unpaid = await doctor(env, tmp_path)
    assert unpaid.status == 1
    assert unpaid.line("✗ AdTarget key: billing is paused: AdTarget answered HTTP 402")


async def test_each_channel_problem_is_its_own_line(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    telegram.add_channel(NO_RIGHT, "No Right")
    telegram.add_channel(PUBLIC, "Public", username="public_channel")
    telegram.add_channel(UNMAPPED, "Unmapped")
    telegram.add_channel(DEMOTED, "Demoted")
    env = await run_bridge_once(
        tmp_path, telegram, mapped, extra=(NO_RIGHT, PUBLIC, UNMAPPED, DEMOTED)
    )
    # While the bridge is stopped, an owner takes rights away: doctor asks Telegram.
    telegram.bot_status_change(NO_RIGHT, "administrator", rights={"can_invite_users": False})
    telegram.bot_status_change(DEMOTED, "member")
    ran = await doctor(env, tmp_path)
    assert ran.status == 1

    no_right = f"✗ channel “No Right” ({NO_RIGHT}) rights"
    assert "administrator without the Invite users via link right" in ran.line(no_right)
    assert "promote the bot with the Invite users right" in ran.fix_after(no_right)
    demoted = f"✗ channel “Demoted” ({DEMOTED}) rights"
    assert "the bot is not an administrator (status: member)" in ran.line(demoted)

    public = f"! channel “Public” ({PUBLIC}) visibility"
    assert "public (@public_channel): personal links still work" in ran.line(public)
    assert "anyone can join through t.me/public_channel without one" in ran.line(public)
    assert "their joins are organic" in ran.line(public)
    assert "make the channel private" in ran.fix_after(public)
    assert "/mode @public_channel request" in ran.fix_after(public)

    unmapped = f"✗ channel “Unmapped” ({UNMAPPED}) on AdTarget"
    assert "not among AdTarget's channels" in ran.line(unmapped)
    assert "add this Telegram channel to your site in AdTarget" in ran.fix_after(unmapped)

    test = f"channel “{CHANNEL_TITLE}” ({CHANNEL_ID})"
    assert ran.line(f"✓ {test} rights")
    assert ran.line(f"✓ {test} visibility")
    assert ran.line(f"✓ {test} on AdTarget")
    assert ran.line(f"✓ channel “Public” ({PUBLIC}) rights")
    assert ran.line(f"✓ channel “Unmapped” ({UNMAPPED}) rights")


async def test_a_public_channel_warns_and_exits_1(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    telegram.add_channel(PUBLIC, "Public", username="public_channel")
    env = await run_bridge_once(tmp_path, telegram, mapped, extra=(PUBLIC,))
    ran = await doctor(env, tmp_path)
    assert ran.status == 1, ran.out + ran.err
    public = f"! channel “Public” ({PUBLIC}) visibility"
    assert "public (@public_channel)" in ran.line(public)
    # The warning is the only line that is not a pass, and the count says so.
    checks = [line for line in ran.out.splitlines() if line and not line[0].isdigit()]
    not_passed = [line for line in checks if not line.startswith(("✓ ", "    fix: "))]
    assert not_passed == [ran.line(public)], ran.out
    assert ran.out.rstrip().endswith("16 passed, 1 warning(s), 0 failed")


async def test_a_taken_tracker_port_fails(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = bridge_env(tmp_path, telegram, adtarget, tracker_port=port)
        ran = await doctor(env, tmp_path)
    assert ran.status == 1
    assert ran.line(f"✗ tracker port: 127.0.0.1:{port} is in use by another program")
    assert "TRACKER_PORT" in ran.fix_after("✗ tracker port:")


async def test_the_running_bridge_may_hold_the_port(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    env = bridge_env(tmp_path, telegram, mapped)
    running = RunningBridge(bridge_settings(tmp_path, telegram, mapped))
    bridge = await running.start()
    try:
        await running.track_channel(telegram)
        port = bridge.tracker_url.rsplit(":", 1)[1]
        ran = await doctor({**env, "TRACKER_PORT": port}, tmp_path)
    finally:
        assert await running.stop() == 0
    assert ran.status == 0, ran.out
    holder = f"a bridge is running (pid {os.getpid()})"
    assert ran.line(f"✓ tracker port: 127.0.0.1:{port} is in use: {holder} and holds the port")
    assert holder in ran.line("✓ database: ")


async def test_a_database_directory_that_cannot_be_made_fails(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    # A file where the database's directory should be: not even root can create it.
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    path = blocker / "bridge.db"
    env = bridge_env(tmp_path, telegram, adtarget, database_path=str(path))
    ran = await doctor(env, tmp_path)
    assert ran.status == 1
    assert ran.line(f"✗ database: cannot create {blocker}: {blocker} is not a directory")
    assert "DATABASE_PATH" in ran.fix_after("✗ database:")
    assert ran.line("- channels: not checked: the database check failed")
    assert not path.exists()


async def test_a_newer_schema_fails_and_an_older_one_will_migrate(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    path = tmp_path / "bridge.db"
    await (await open_database(path)).close()
    latest = latest_version()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, 0)",
            (latest + 1, f"{latest + 1:03d}_from_the_future.sql"),
        )
    env = bridge_env(tmp_path, telegram, adtarget, database_path=str(path))
    newer = await doctor(env, tmp_path)
    assert newer.status == 1
    assert newer.line(f"✗ database: {path} has schema version {latest + 1}, newer than")
    assert "restore a backup" in newer.fix_after("✗ database:")

    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version >= ?", (latest,))
    older = await doctor(env, tmp_path)
    assert older.status == 1, older.out  # only because no channel is tracked yet
    assert older.line("! channels: no channel is tracked yet")
    assert f"will migrate {latest - 1}→{latest} at start" in older.line("✓ database: ")


async def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    ran = await doctor({"ADTARGET_API_KEY": FakeAdTarget.API_KEY}, tmp_path)
    assert ran.status == 2
    assert ran.line("✗ settings: BOT_TOKEN is required but not set")
    assert ".env.example" in ran.fix_after("✗ settings:")


async def test_doctor_changes_nothing_at_telegram(
    tmp_path: Path, telegram: FakeTelegram, adtarget: FakeAdTarget
) -> None:
    telegram.set_webhook("https://hooks.example.com/hook")
    await doctor(bridge_env(tmp_path, telegram, adtarget), tmp_path)
    called = {call.method for call in telegram.calls}
    assert called == {"getMe", "getWebhookInfo"}  # no channel tracked: nothing else
    assert telegram.webhook_url == "https://hooks.example.com/hook"
    assert not (tmp_path / "bridge.db").exists()


async def test_an_env_file_others_may_read_warns_with_the_chmod(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    env = await run_bridge_once(tmp_path, telegram, mapped)
    env_file = tmp_path / ".env"  # doctor runs in tmp_path, so reads this one
    env_file.write_text(f"ADTARGET_API_KEY={env.pop('ADTARGET_API_KEY')}\n")
    env_file.chmod(0o644)
    loose = await doctor(env, tmp_path)
    assert loose.status == 1
    line = loose.line("! .env: ")
    assert f"{env_file} has mode 0644: its group and every user of this machine can read" in line
    assert loose.fix_after("! .env: ") == "    fix: chmod 600 .env"
    env_file.chmod(0o600)
    tight = await doctor(env, tmp_path)
    assert tight.status == 0, tight.out
    assert tight.line("✓ settings: loaded from .env and the environment")
    assert tight.line(f"✓ .env: {env_file} is for its owner only (mode 0600)")


async def test_settings_that_break_a_deploy_warn_with_the_fix(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    env = await run_bridge_once(tmp_path, telegram, mapped)
    risky = {"TRACKER_PUBLIC_URL": "", "ADMIN_IDS": "", "TRUSTED_PROXIES": "0.0.0.0/0, ::/0"}
    ran = await doctor({**env, **risky}, tmp_path)
    assert ran.status == 1, ran.out + ran.err
    url = ran.line("! public tracker URL: TRACKER_PUBLIC_URL is not set")
    button = f"the landing snippet's button points at http://127.0.0.1:{env['TRACKER_PORT']},"
    assert f"{button} which no visitor can reach" in url
    assert "set TRACKER_PUBLIC_URL to the public https URL your reverse proxy (nginx)" in (
        ran.fix_after("! public tracker URL:")
    )
    assert "the bridge's alerts" in ran.line("! admins: ADMIN_IDS is empty")
    assert "go to nobody" in ran.line("! admins:")
    assert "send /start to the bot" in ran.fix_after("! admins:")
    assert "answers with your numeric user id" in ran.fix_after("! admins:")
    proxies = ran.line("! trusted proxies: TRUSTED_PROXIES holds 0.0.0.0/0, ::/0")
    assert "any client can forge X-Forwarded-For" in proxies
    assert "list only your reverse proxy's address" in ran.fix_after("! trusted proxies:")
    assert ran.out.rstrip().endswith("3 warning(s), 0 failed")

    # A public URL visitors cannot use; a proxy network of a good part of the internet.
    worse = {
        "TRACKER_PUBLIC_URL": "http://track.example.com",
        "TRUSTED_PROXIES": "127.0.0.1, 128.0.0.0/1",
    }
    ran = await doctor({**env, **worse}, tmp_path)
    assert "browsers block mixed content" in ran.line("! public tracker URL:")
    assert ran.line("! trusted proxies: TRUSTED_PROXIES holds 128.0.0.0/1: any client")
    local = await doctor({**env, "TRACKER_PUBLIC_URL": "http://localhost:8080"}, tmp_path)
    assert "this machine's own address" in local.line("! public tracker URL:")
    # A proxy fleet's network is not flagged.
    fleet = await doctor({**env, "TRUSTED_PROXIES": "10.0.0.0/8, 2400:cb00::/32"}, tmp_path)
    assert fleet.status == 0, fleet.out
    assert fleet.line("✓ trusted proxies: TRUSTED_PROXIES: 10.0.0.0/8, 2400:cb00::/32")


async def test_a_group_id_in_admin_ids_is_a_bad_setting(tmp_path: Path) -> None:
    env = {"BOT_TOKEN": "123:abc", "ADTARGET_API_KEY": FakeAdTarget.API_KEY}
    ran = await doctor({**env, "ADMIN_IDS": f"{OWNER},-1001234567890"}, tmp_path)
    assert ran.status == 2
    line = ran.line("✗ settings: ADMIN_IDS is invalid: -1001234567890 is not a user id")
    assert "send /start to the bot" in line


async def test_a_purchase_without_a_value_warns(
    tmp_path: Path, telegram: FakeTelegram, mapped: FakeAdTarget
) -> None:
    env = await run_bridge_once(tmp_path, telegram, mapped)
    # As an older release could leave it: Purchase with no value.
    with sqlite3.connect(env["DATABASE_PATH"]) as conn:
        conn.execute("UPDATE channels SET event_type = 'Purchase' WHERE chat_id = ?", (CHANNEL_ID,))
    ran = await doctor(env, tmp_path)
    assert ran.status == 1, ran.out
    event = f"! channel “{CHANNEL_TITLE}” ({CHANNEL_ID}) event"
    assert "/event set its event to Purchase, which cannot be used" in ran.line(event)
    assert "ad platforms drop a Purchase without a value" in ran.line(event)
    assert "its joins are reported as Lead instead" in ran.line(event)
    assert f"/event {CHANNEL_ID} Purchase <value> <currency>" in ran.fix_after(event)

    with sqlite3.connect(env["DATABASE_PATH"]) as conn:
        conn.execute("UPDATE channels SET event_value = 9.99, event_currency = 'EUR'")
    valued = await doctor(env, tmp_path)
    assert valued.status == 0, valued.out
    assert valued.line(
        f"✓ channel “{CHANNEL_TITLE}” ({CHANNEL_ID}) event: joins are reported as"
        " Purchase 9.99 EUR (set with /event)"
    )
