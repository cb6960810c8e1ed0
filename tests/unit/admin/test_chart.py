"""/chart: the daily series (storage/daily.py), the picture read back from the PNG
the Telegram simulator received, the command's answers, and matplotlib kept out of
the bridge until a chart is drawn."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest
from PIL import Image

from bot.admin.chart import HEIGHT_PX, KINDS, LEAVES_COLOUR, WIDTH_PX, render
from bot.admin.commands import REFUSAL
from bot.simulators.telegram import Call, FakeTelegram
from storage import channels, joins
from storage.daily import DAY, Day, daily
from storage.db import Database, Transaction
from storage.invite_links import FALLBACK_CAMPAIGN
from storage.stats import channel_stats
from tests.harness import CHANNEL_ID, OWNER, ROOT, RunningBridge, ask, eventually, write

A = -1001000000001
B = -1001000000002
TODAY = 20_400  # a UTC day number: 2025-11-07
NOON = TODAY * DAY + 12 * 3600
CHANNEL_ADMIN = 777
STRANGER = 999
OTHER_CHANNEL = -1009876543210

# link id: (chat, kind, campaign)
LINKS = {
    1: (A, "visitor", None),
    2: (A, "visitor", None),
    3: (A, "visitor", None),
    4: (B, "visitor", None),
    10: (A, "campaign", "promo"),
    11: (A, "campaign", FALLBACK_CAMPAIGN),
    12: (B, "campaign", FALLBACK_CAMPAIGN),
}
# (chat, user, link or None for organic, joined_at)
JOINS = [
    (A, 1, 1, NOON),
    (A, 2, 10, NOON + 60),
    (A, 3, 11, TODAY * DAY),  # 00:00 UTC: today, not yesterday
    (A, 4, None, TODAY * DAY - 1),  # 23:59:59 yesterday
    (A, 5, 2, NOON - 2 * DAY),
    (A, 6, 11, NOON - 2 * DAY),
    (A, 7, 3, NOON - 29 * DAY),  # the first of 30 days
    (A, 8, None, NOON - 30 * DAY),  # the day before: outside 30 days
    (A, 9, None, NOON + 2 * DAY),  # dated past today (clock skew): counts today
    (B, 1, 4, NOON),
    (B, 2, 12, NOON - DAY),
    (B, 3, None, NOON - 89 * DAY),
]
# (chat, user, left_at)
LEAVES = [(A, 1, NOON + 600), (A, 5, NOON - DAY), (B, 3, NOON - 30 * DAY)]


@pytest.fixture
async def engine_db(engine_db: Database) -> Database:
    """The shared fixture's database, seeded with the rows above."""
    await write(engine_db, _seed)
    return engine_db


async def _seed(tx: Transaction) -> None:
    for chat_id in (A, B):
        await channels.upsert_in(
            tx,
            chat_id,
            title=f"Channel {chat_id}",
            username=None,
            chat_type="channel",
            active=True,
            can_invite_users=True,
        )
    await tx.executemany(
        "INSERT INTO invite_links (id, url, chat_id, kind, name, campaign, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (i, f"https://t.me/+{i}", chat, kind, f"link {i}", campaign, NOON - 100 * DAY)
            for i, (chat, kind, campaign) in LINKS.items()
        ],
    )
    rows = []
    for chat, user, link, at in JOINS:
        kind = "organic" if link is None else LINKS[link][1]
        rows.append(
            joins.NewJoin(
                chat_id=chat,
                user_id=user,
                kind="attributed" if kind == "visitor" else kind,
                link_id=link,
                link_url=None,
                via_join_request=False,
                joined_at=at,
                update_id=None,
                campaign=LINKS[link][2] if link else None,
            )
        )
    await joins.insert_many(tx, rows)
    await joins.record_leaves(
        tx, [joins.NewLeave(chat, user, at, None) for chat, user, at in LEAVES]
    )


def _counts(day: Day) -> tuple[int, int, int, int, int]:
    return (day.attributed, day.campaign, day.fallback, day.organic, day.leaves)


async def test_daily_counts_each_utc_day_by_kind_with_zeros(engine_db: Database) -> None:
    series = await daily(engine_db, [A], TODAY - 29, TODAY)
    assert [d.day for d in series] == list(range(TODAY - 29, TODAY + 1))
    by_day = {d.day: _counts(d) for d in series}
    # (attributed, campaign, fallback, organic, leaves)
    assert by_day[TODAY] == (1, 1, 1, 1, 1)  # the skewed organic join counts today
    assert by_day[TODAY - 1] == (0, 0, 0, 1, 1)
    assert by_day[TODAY - 2] == (1, 0, 1, 0, 0)
    assert by_day[TODAY - 29] == (1, 0, 0, 0, 0)
    quiet = [d for d in series if d.day not in (TODAY, TODAY - 1, TODAY - 2, TODAY - 29)]
    assert all(_counts(d) == (0, 0, 0, 0, 0) for d in quiet)
    assert series[-1].attribution_rate == 0.75
    assert series[-2].attribution_rate == 0.0
    assert series[1].attribution_rate is None  # no joins that day


async def test_daily_sums_the_channels_asked_for_only(engine_db: Database) -> None:
    both = await daily(engine_db, [A, B], TODAY - 89, TODAY)
    assert len(both) == 90
    assert _counts(both[-1]) == (2, 1, 1, 1, 1)
    assert _counts(both[-2]) == (0, 0, 1, 1, 1)
    assert _counts(both[0]) == (0, 0, 0, 1, 0)  # B's organic join 89 days ago
    assert sum(d.leaves for d in both) == 3
    only_b = await daily(engine_db, [B], TODAY - 89, TODAY)
    assert sum(d.joins for d in only_b) == 3
    assert await daily(engine_db, [], TODAY - 1, TODAY) == [Day(TODAY - 1), Day(TODAY)]


async def test_daily_classifies_joins_as_stats_does(engine_db: Database) -> None:
    """Over the same span the daily series adds up to /stats's figures per kind."""
    for chat_id, ids in ((A, [A]), (B, [B]), (None, [A, B])):
        series = await daily(engine_db, ids, TODAY - 29, TODAY)
        figures = await channel_stats(
            engine_db, chat_id=chat_id, since=(TODAY - 29) * DAY, now=NOON + 3 * DAY
        )
        assert sum(d.attributed for d in series) == figures.joins_attributed
        assert sum(d.campaign for d in series) == figures.joins_campaign
        assert sum(d.fallback for d in series) == figures.joins_fallback
        assert sum(d.organic for d in series) == figures.joins_organic
        assert sum(d.leaves for d in series) == figures.leaves


def _pixels(png: bytes) -> dict[tuple[int, int, int], int]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (WIDTH_PX, HEIGHT_PX)
    colours = image.convert("RGB").getcolors(maxcolors=WIDTH_PX * HEIGHT_PX)
    assert colours is not None
    return {colour: count for count, colour in colours}


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour.lstrip("#"), 16)
    return (value >> 16, (value >> 8) & 0xFF, value & 0xFF)


# A legend's swatch is 184 pixels; a bar of one join among 20 on a day, 30 days
# drawn, is about 600 more.
BAR = 400


def test_render_draws_each_kind_and_the_leaves() -> None:
    days = [Day(TODAY - 29 + i) for i in range(30)]
    days[3] = Day(TODAY - 26, attributed=5, campaign=2, fallback=1, organic=3, leaves=2)
    days[20] = Day(TODAY - 9, attributed=8, organic=1, leaves=4)
    pixels = _pixels(render(days, "last 30 days"))
    for _, _, colour in KINDS:
        assert pixels.get(_rgb(colour), 0) > BAR, colour
    assert pixels.get(_rgb(LEAVES_COLOUR), 0) > BAR
    only_organic = [Day(TODAY - 1, organic=4), Day(TODAY)]
    pixels = _pixels(render(only_organic, "last 2 days"))
    assert pixels.get(_rgb(KINDS[0][2]), 0) < BAR  # the legend only: no attributed bar
    assert pixels.get(_rgb(KINDS[3][2]), 0) > BAR


def test_importing_the_bridge_does_not_import_matplotlib() -> None:
    code = (
        "import sys, bot.app, bot.admin.chart, bot.admin.chart_command, handlers, handlers.admin;"
        "handlers.get_routers();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'numpy', 'PIL')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# ---- through the running bridge and the Telegram simulator ----------------------------


async def ask_chart(telegram: FakeTelegram, user_id: int, text: str) -> Call:
    """Send /chart as `user_id`; the bot's answer to them: a sendPhoto or sendMessage."""
    before = len(telegram.calls)
    telegram.message(user_id, user_id, text)

    def answer() -> Call | None:
        return next(
            (
                c
                for c in telegram.calls[before:]
                if c.method in ("sendPhoto", "sendMessage") and c.params.get("chat_id") == user_id
            ),
            None,
        )

    await eventually(lambda: answer() is not None, what=f"answer to {text!r}")
    found = answer()
    assert found is not None
    return found


async def link_of(telegram: FakeTelegram, command: str) -> str:
    found = re.search(r"https://t\.me/\+\S+", await ask(telegram, OWNER, command))
    assert found, command
    return found.group(0)


async def test_admin_gets_the_chart_as_a_png_photo(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    promo = await link_of(telegram, "/link Test promo")
    fallback = await link_of(telegram, f"/link Test {FALLBACK_CAMPAIGN}")
    personal = [await admin_bridge.mint(f"51515151-0000-4000-8000-00000000000{i}") for i in (1, 2)]
    today = int(time.time())  # the bridge charts the days up to its own today
    telegram.join(CHANNEL_ID, 501, personal[0], date=today - 3 * DAY)
    telegram.join(CHANNEL_ID, 502, personal[1], date=today)
    telegram.join(CHANNEL_ID, 503, promo, date=today - DAY)
    telegram.join(CHANNEL_ID, 504, fallback, date=today - DAY)
    telegram.join(CHANNEL_ID, 505, date=today - 2 * DAY)
    telegram.leave(CHANNEL_ID, 501, date=today)
    await admin_bridge.wait_scalar("SELECT count(*) FROM joins", 5)
    await admin_bridge.wait_scalar("SELECT count(*) FROM leaves", 1)

    answer = await ask_chart(telegram, OWNER, "/chart")
    assert answer.method == "sendPhoto", answer.raw
    png = answer.upload("photo")
    assert png is not None
    pixels = _pixels(png)
    assert len(pixels) > 10  # drawn, not a blank canvas
    for _, _, colour in KINDS:
        assert pixels.get(_rgb(colour), 0) > BAR, colour
    assert pixels.get(_rgb(LEAVES_COLOUR), 0) > BAR
    caption = answer.raw["caption"]
    assert "Test Channel" in caption
    assert "last 30 days" in caption
    assert "Joins 5, through your links 80%" in caption
    assert "leaves 1" in caption
    # The same, asked by channel and period.
    answer = await ask_chart(telegram, OWNER, "/chart Test 90d")
    assert answer.method == "sendPhoto", answer.raw
    assert "last 90 days" in answer.raw["caption"]
    assert _pixels(answer.upload("photo") or b"")


async def test_no_joins_yet_is_said_in_words(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    answer = await ask_chart(telegram, OWNER, "/chart 90d")
    assert answer.method == "sendMessage"
    assert answer.raw["text"].startswith(
        "Nothing to draw for Test Channel: no joins or leaves in the last 90 days (UTC)."
    )


async def test_bad_arguments_get_the_usage_line(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    for command in ("/chart 7d", "/chart all", "/chart Test 365d", "/chart Nowhere"):
        text = await ask(telegram, OWNER, command)
        assert text.startswith("Usage: /chart [channel] [30d|90d]"), (command, text)
    assert "No channel “Nowhere” among yours" in await ask(telegram, OWNER, "/chart Nowhere")
    assert not telegram.calls_to("sendPhoto")


async def test_a_channel_admin_charts_only_their_channels_and_a_stranger_nothing(
    admin_bridge: RunningBridge, telegram: FakeTelegram
) -> None:
    telegram.add_channel(OTHER_CHANNEL, "Other Channel")
    await admin_bridge.track_channel(telegram, OTHER_CHANNEL)
    telegram.join(OTHER_CHANNEL, 601)
    made_admin = telegram.join(CHANNEL_ID, CHANNEL_ADMIN, new_status="administrator")
    await admin_bridge.wait_scalar("SELECT count(*) FROM joins", 2)
    assert made_admin is not None

    refused = await ask(telegram, CHANNEL_ADMIN, "/chart Other")
    assert "No channel “Other” among yours" in refused
    assert "Test Channel" in refused
    # Without a channel: theirs only, so the other channel's join is not drawn.
    answer = await ask_chart(telegram, CHANNEL_ADMIN, "/chart")
    assert answer.method == "sendPhoto", answer.raw
    assert "Test Channel" in answer.raw["caption"]
    assert "Other" not in answer.raw["caption"]
    assert await ask(telegram, STRANGER, "/chart") == REFUSAL
    assert await ask(telegram, STRANGER, "/chart Test 30d") == REFUSAL
    # ADMIN_IDS see every channel.
    answer = await ask_chart(telegram, OWNER, "/chart")
    assert "2 channels: " in answer.raw["caption"]
    assert "Other Channel" in answer.raw["caption"]
