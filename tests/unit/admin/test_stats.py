"""/stats: exact figures per channel and period over a seeded database, and the message."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from bot.admin.stats import PERIODS, header, period_start, render
from bot.adtarget.dispatch import NO_SIGNAL, WARNING_CLIP, capi_words, dispatch_words, warning_words
from bot.simulators.adtarget_rules import NO_SIGNAL_WARNING
from storage import channels, joins, outbox
from storage.channels import Channel
from storage.db import Database, Transaction, open_database
from storage.invite_links import FALLBACK_CAMPAIGN
from storage.stats import SourceRow, StatsRow, channel_stats
from tests.harness import ROOT, write

DAY = 86400
NOW = 1_760_054_400 + 12 * 3600  # 12:00 UTC
T = NOW - 3600  # today, 11:00
Y = NOW - 13 * 3600  # yesterday, 23:00: in 7d, not today
D3 = NOW - 3 * DAY
D20 = NOW - 20 * DAY
D100 = NOW - 100 * DAY

A = -1001000000001
B = -1001000000002

# visit id: (created_at, utm_source, utm_campaign)
VISITS = {
    1: (T, "facebook", "spring"),
    2: (T, "facebook", "spring"),
    3: (D20, "google", None),  # visited 20 days ago, given a link in A today
    5: (Y, "tiktok", "x"),
    6: (D3, "facebook", "spring"),
    7: (D20, None, None),
    8: (D100, "facebook", "spring"),
    9: (T, "facebook", "spring"),
    10: (D20, "tiktok", "x"),
    11: (D100, "bing", "z"),
}
# link id: (chat, kind, visit, campaign, created_at, assigned_at)
LINKS = {
    1: (A, "visitor", 1, None, D3, T),  # a pool link, given today
    2: (A, "visitor", 2, None, T, None),
    3: (A, "visitor", 3, None, T, None),  # never used
    4: (A, "visitor", 1, None, T, None),  # visitor 1's second link in A
    5: (A, "visitor", 5, None, Y, None),
    6: (A, "visitor", 6, None, D3, None),
    7: (A, "visitor", 7, None, D20, None),
    8: (A, "visitor", 8, None, D100, None),
    9: (B, "visitor", 9, None, T, None),
    10: (B, "visitor", 1, None, T, None),  # visitor 1 in B too
    11: (B, "visitor", 10, None, D20, None),
    12: (A, "visitor", 6, None, D100, D3),  # minted long ago, given 3 days ago
    13: (B, "visitor", 11, None, D100, None),
    20: (A, "visitor", None, None, T, None),  # in the pool, never given: not issued
    30: (A, "campaign", None, "promo", D100, None),
    31: (B, "campaign", None, "autumn", D100, None),
}
# (chat, user, link, joined_at, conversion state or None)
JOINS = [
    (A, 1, 1, T, "delivered"),
    (A, 2, 2, T, "pending"),
    (A, 4, 30, T, "sending"),
    (A, 5, None, T, None),
    (A, 6, 5, Y, "parked"),
    (A, 7, 6, D3, "delivered"),
    (A, 8, None, D3, None),
    (A, 9, 7, D20, "delivered"),
    (A, 10, 30, D20, "delivered"),
    (A, 11, 8, D100, "delivered"),
    (A, 12, None, D100, None),
    (B, 1, 9, T, "delivered"),
    (B, 20, None, D3, None),
    (B, 21, 11, D20, "pending"),
    (B, 22, 31, D100, "delivered"),
    (B, 23, 13, D100, "delivered"),
]
PAUSED = "Pixel 77 is paused"  # a warning the bridge does not know
# AdTarget's answer to a delivered conversion, (chat, user): (dispatched, warning);
# A 11's is not known (a delivery confirmed through /leads).
ANSWERS: dict[tuple[int, int], tuple[bool | None, str | None]] = {
    (A, 1): (True, None),
    (A, 7): (False, NO_SIGNAL_WARNING),
    (A, 9): (False, PAUSED),
    (A, 10): (False, NO_SIGNAL_WARNING),
    (A, 11): (None, None),
    (B, 1): (False, NO_SIGNAL_WARNING),
    (B, 22): (True, PAUSED),
    (B, 23): (False, PAUSED),
}
LEAVES = [
    (A, 2, T + 60),
    (A, 7, D3 + 3600),
    (A, 8, T + 120),
    (A, 11, D20 + 3600),
    (B, 22, D100 + DAY),
]

# (visits, links, attributed, campaign, organic, delivered, pending, parked, leaves,
#  still subscribed: the period's joins of every kind with no leave since)
EXPECTED: dict[tuple[int | None, str], tuple[int, ...]] = {
    (A, "today"): (3, 4, 2, 1, 1, 1, 2, 0, 2, 3),
    (A, "7d"): (5, 7, 4, 1, 2, 2, 2, 1, 3, 4),
    (A, "30d"): (6, 8, 5, 2, 2, 4, 2, 1, 4, 6),
    (A, "all"): (7, 9, 6, 2, 3, 5, 2, 1, 4, 7),
    (B, "today"): (2, 2, 1, 0, 0, 1, 0, 0, 0, 1),
    (B, "7d"): (2, 2, 1, 0, 1, 1, 0, 0, 0, 2),
    (B, "30d"): (3, 3, 2, 0, 1, 1, 1, 0, 0, 3),
    (B, "all"): (4, 4, 3, 1, 1, 3, 1, 0, 1, 4),
    (None, "today"): (3, 6, 3, 1, 1, 2, 2, 0, 2, 4),
    (None, "7d"): (5, 9, 5, 1, 3, 3, 2, 1, 3, 6),
    (None, "30d"): (8, 11, 7, 2, 3, 5, 3, 1, 4, 9),
    (None, "all"): (10, 13, 9, 3, 4, 8, 3, 1, 5, 11),
}


async def _seed(db: Database) -> None:
    await write(db, _seed_rows)


async def _seed_rows(tx: Transaction) -> None:
    for chat_id, title in ((A, "Channel A"), (B, "Channel B")):
        await channels.upsert_in(
            tx,
            chat_id,
            title=title,
            username=None,
            chat_type="channel",
            active=True,
            can_invite_users=True,
        )
    await tx.executemany(
        "INSERT INTO visits (id, temp_id, utm_source, utm_campaign, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(i, f"tmp-{i}", src, camp, at, at) for i, (at, src, camp) in VISITS.items()],
    )
    await tx.executemany(
        "INSERT INTO invite_links (id, url, chat_id, kind, name, visit_id, campaign,"
        " created_at, assigned_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (i, f"https://t.me/+{i}", chat, kind, f"link {i}", visit, campaign, made, given)
            for i, (chat, kind, visit, campaign, made, given) in LINKS.items()
        ],
    )
    rows = []
    for chat, user, link, at, _ in JOINS:
        kind = "organic" if link is None else LINKS[link][1]
        kind = "attributed" if kind == "visitor" else kind
        visit = VISITS[LINKS[link][2] or 0] if link and kind == "attributed" else None
        rows.append(
            joins.NewJoin(
                chat_id=chat,
                user_id=user,
                kind=kind,
                link_id=link,
                link_url=None,
                via_join_request=False,
                joined_at=at,
                update_id=None,
                utm_source=visit[1] if visit else None,
                utm_campaign=visit[2] if visit else None,
                campaign=LINKS[link][3] if link and kind == "campaign" else None,
            )
        )
    ids = await joins.insert_many(tx, rows)
    assert len(ids) == len(JOINS)
    await outbox.enqueue_many(
        tx,
        [
            outbox.NewRow(
                kind="conversion",
                path="/events/conversion",
                body={},
                idempotency_key=f"conv-{index}",
                join_id=ids[index],
                telegram_user_id=user,
                chat_id=chat,
                event_time_ms=at * 1000,
            )
            for index, (chat, user, _, at, state) in enumerate(JOINS)
            if state
        ]
        # Not a conversion: never counted.
        + [
            outbox.NewRow(
                kind="visit",
                path="/v",
                body={},
                idempotency_key="v",
                chat_id=A,
                priority=outbox.FORWARD_PRIORITY,
            )
        ],
    )
    await tx.executemany(
        "UPDATE outbox SET state = ? WHERE idempotency_key = ?",
        [(state, f"conv-{index}") for index, (*_, state) in enumerate(JOINS) if state],
    )
    await tx.executemany(
        "UPDATE outbox SET dispatched = ?, warning = ? WHERE chat_id = ? AND telegram_user_id = ?",
        [(sent, warning, chat, user) for (chat, user), (sent, warning) in ANSWERS.items()],
    )
    await joins.record_leaves(
        tx, [joins.NewLeave(chat, user, at, None) for chat, user, at in LEAVES]
    )


def _figures(row: StatsRow) -> tuple[int, ...]:
    return (
        row.visits,
        row.links_issued,
        row.joins_attributed,
        row.joins_campaign,
        row.joins_organic,
        row.conversions_delivered,
        row.conversions_pending,
        row.conversions_parked,
        row.leaves,
        row.still_subscribed,
    )


async def test_figures_per_channel_and_period(engine_db: Database) -> None:
    await _seed(engine_db)
    for (chat, period), expected in EXPECTED.items():
        row = await channel_stats(engine_db, chat_id=chat, since=period_start(period, NOW), now=NOW)
        assert _figures(row) == expected, (chat, period)
        total = expected[2] + expected[3] + expected[4]
        assert row.joins == total
        assert row.attribution_rate == pytest.approx((expected[2] + expected[3]) / total)


# (dispatched, skipped, top warning, on how many); delivered as in EXPECTED.
DISPATCH: dict[tuple[int | None, str], tuple[int, int, str | None, int]] = {
    (A, "today"): (1, 0, None, 0),
    (A, "7d"): (1, 1, NO_SIGNAL_WARNING, 1),
    (A, "30d"): (1, 3, NO_SIGNAL_WARNING, 2),
    (A, "all"): (1, 3, NO_SIGNAL_WARNING, 2),  # and A 11's answer not known
    (B, "today"): (0, 1, NO_SIGNAL_WARNING, 1),
    (B, "7d"): (0, 1, NO_SIGNAL_WARNING, 1),
    (B, "30d"): (0, 1, NO_SIGNAL_WARNING, 1),
    (B, "all"): (1, 2, PAUSED, 2),  # a warning on a dispatched conversion counts too
    (None, "today"): (1, 1, NO_SIGNAL_WARNING, 1),
    (None, "7d"): (1, 2, NO_SIGNAL_WARNING, 2),
    (None, "30d"): (1, 4, NO_SIGNAL_WARNING, 3),
    (None, "all"): (2, 5, NO_SIGNAL_WARNING, 3),  # a tie with PAUSED: the first by text
}


async def test_dispatched_skipped_and_the_top_warning(engine_db: Database) -> None:
    await _seed(engine_db)
    for (chat, period), expected in DISPATCH.items():
        row = await channel_stats(engine_db, chat_id=chat, since=period_start(period, NOW), now=NOW)
        figures = (
            row.conversions_dispatched,
            row.conversions_skipped,
            row.top_warning,
            row.top_warning_count,
        )
        assert figures == expected, (chat, period)
    # Only delivered conversions carry an answer; the unknown one is the difference.
    row = await channel_stats(engine_db, chat_id=A, since=None, now=NOW)
    assert row.conversions_delivered - row.conversions_dispatched - row.conversions_skipped == 1


async def test_top_sources(engine_db: Database) -> None:
    await _seed(engine_db)

    async def top(chat: int | None, period: str) -> tuple[SourceRow, ...]:
        row = await channel_stats(engine_db, chat_id=chat, since=period_start(period, NOW), now=NOW)
        return row.top_sources

    assert await top(A, "today") == (
        SourceRow("facebook", "spring", 2, 1),
        SourceRow("campaign:promo", None, 1, 1),
    )
    assert await top(A, "7d") == (
        SourceRow("facebook", "spring", 3, 1),
        SourceRow("campaign:promo", None, 1, 1),
        SourceRow("tiktok", "x", 1, 1),
    )
    assert await top(A, "30d") == (
        SourceRow("facebook", "spring", 3, 1),
        SourceRow("campaign:promo", None, 2, 2),
        SourceRow("(none)", None, 1, 1),
        SourceRow("tiktok", "x", 1, 1),
    )
    assert await top(B, "all") == (
        SourceRow("bing", "z", 1, 1),
        SourceRow("campaign:autumn", None, 1, 0),
        SourceRow("facebook", "spring", 1, 1),
        SourceRow("tiktok", "x", 1, 1),
    )
    # Six sources over both channels: the top five, merged across channels.
    assert await top(None, "all") == (
        SourceRow("facebook", "spring", 5, 2),
        SourceRow("campaign:promo", None, 2, 2),
        SourceRow("tiktok", "x", 2, 2),
        SourceRow("(none)", None, 1, 1),
        SourceRow("bing", "z", 1, 1),
    )
    assert (await top(None, "all"))[0].kept == pytest.approx(0.4)


async def test_fallback_joins_are_counted_apart_from_campaigns(engine_db: Database) -> None:
    """Joins through the channel's fallback link are campaign joins by kind, on a line
    (and a source) of their own."""
    await _seed(engine_db)
    before = await channel_stats(engine_db, chat_id=A, since=period_start("today", NOW), now=NOW)

    async def add(tx: Transaction) -> None:
        await tx.execute(
            "INSERT INTO invite_links (id, url, chat_id, kind, name, campaign, created_at)"
            " VALUES (40, 'https://t.me/+fallback', ?, 'campaign', 'jb-c fallback', ?, ?)",
            (A, FALLBACK_CAMPAIGN, D3),
        )
        await joins.insert_many(
            tx,
            [
                joins.NewJoin(A, user, "campaign", 40, None, False, T, None, campaign="fallback")
                for user in (40, 41)
            ],
        )

    await write(engine_db, add)
    row = await channel_stats(engine_db, chat_id=A, since=period_start("today", NOW), now=NOW)
    assert (row.joins_fallback, row.joins_campaign) == (2, before.joins_campaign)
    assert row.joins == before.joins + 2
    assert row.attribution_rate == pytest.approx(
        (before.joins_attributed + before.joins_campaign + 2) / (before.joins + 2)
    )
    assert SourceRow("fallback", None, 2, 2) in row.top_sources
    assert "  fallback               2\n" in render([_channel(A, "A")], "today", row)


async def test_empty_database(engine_db: Database) -> None:
    for chat in (A, None):
        for period in PERIODS:
            row = await channel_stats(
                engine_db, chat_id=chat, since=period_start(period, NOW), now=NOW
            )
            assert _figures(row) == (0,) * 10
            assert row.joins == 0
            assert row.attribution_rate is None
            assert row.top_sources == ()
    text = render([], "all", row)
    assert text.startswith("<b>All channels</b> · all time\nnone tracked yet\n<pre>")
    assert "Attribution" + " " * 14 + "–" in text
    assert "Top sources: none yet" in text
    assert "warning" not in text


def test_period_start() -> None:
    assert period_start("today", NOW) == NOW - 12 * 3600
    assert period_start("today", 1_760_054_400) == 1_760_054_400
    assert period_start("7d", NOW) == NOW - 7 * DAY
    assert period_start("30d", NOW) == NOW - 30 * DAY
    assert period_start("all", NOW) is None
    with pytest.raises(ValueError, match="unknown period"):
        period_start("1y", NOW)


def _channel(chat_id: int, title: str, username: str | None = None) -> Channel:
    return Channel(chat_id, title, username, True, True, None, "link", None)


async def test_render(engine_db: Database) -> None:
    await _seed(engine_db)
    row = await channel_stats(engine_db, chat_id=A, since=period_start("30d", NOW), now=NOW)
    text = render([_channel(A, "Cats & <Dogs>", "cats")], "30d", row)
    assert text == (
        "<b>Cats &amp; &lt;Dogs&gt;</b> (@cats) · last 30 days\n"
        "<pre>"
        "Visits                   6\n"
        "Links issued             8\n"
        "Joins                    9\n"
        "  attributed             5\n"
        "  campaign               2\n"
        "  fallback               0\n"
        "  organic                2\n"
        "Attribution            78%\n"
        "Still subscribed         6\n"
        "Left (any member)        4\n"
        "Conversions\n"
        "  delivered              4\n"
        "    to ad platform       1\n"
        "    skipped              3\n"
        "  pending                2\n"
        "  parked                 1"
        "</pre>\n"
        "Most frequent warning from AdTarget, on 2 conversions: no ad click id or browser id"
        " (fbc, fbp, gclid…) matched a pixel — check that the landing page sends fbc/fbp;"
        " campaign-link joins carry none\n"
        "<pre>"
        "Top sources          joins  kept\n"
        "facebook/spring          3   33%\n"
        "campaign:promo           2  100%\n"
        "(none)                   1  100%\n"
        "tiktok/x                 1  100%"
        "</pre>"
    )
    tables = re.findall(r"<pre>(.*?)</pre>", text, re.DOTALL)
    assert max(len(line) for table in tables for line in table.split("\n")) <= 34
    # All time: A 11's answer is not known, on a line of its own.
    row = await channel_stats(engine_db, chat_id=A, since=None, now=NOW)
    assert "    skipped              3\n    not known            1\n" in render(
        [_channel(A, "A")], "all", row
    )


def test_header_names_the_channels_it_covers() -> None:
    one = [_channel(A, "Cats & <Dogs>")]
    assert header(one, "7d") == "<b>Cats &amp; &lt;Dogs&gt;</b> · last 7 days"
    assert header([_channel(A, "Cats", "cats")], "today") == "<b>Cats</b> (@cats) · today (UTC)"
    titles = ["Alpha", "Beta & Co", "A title far longer than anyone would read", "Delta", "Eps"]
    several = [_channel(A - i, title) for i, title in enumerate(titles)]
    assert header(several[:2], "all") == "<b>All 2 channels</b> · all time\nAlpha and Beta &amp; Co"
    # Up to four are all named; past that the first three and how many more.
    assert header(several[:4], "30d") == (
        "<b>All 4 channels</b> · last 30 days\n"
        "Alpha, Beta &amp; Co, A title far longer than… and Delta"
    )
    assert header(several, "30d") == (
        "<b>All 5 channels</b> · last 30 days\n"
        "Alpha, Beta &amp; Co, A title far longer than… and 2 more"
    )


def test_warning_wording() -> None:
    assert warning_words(NO_SIGNAL_WARNING) == NO_SIGNAL
    # Recognised by what it says, not its exact text (which AdTarget does not document).
    assert warning_words("no signal matched any pixel on site 12") == NO_SIGNAL
    assert warning_words("No fbc/fbp matched a configured pixel") == NO_SIGNAL
    assert (
        warning_words("Pixel matched; value missing")
        == "AdTarget says “Pixel matched; value missing”"
    )
    long = "Unknown  thing\n" + "x" * 200
    clipped = warning_words(long)
    assert clipped == "AdTarget says “Unknown thing " + "x" * (WARNING_CLIP - 15) + "…”"
    assert dispatch_words(True, None) == "passed on to the ad platform"
    assert (
        dispatch_words(False, NO_SIGNAL_WARNING) == f"not passed on to an ad platform: {NO_SIGNAL}"
    )
    assert dispatch_words(False, None) == "not passed on to an ad platform: AdTarget gave no reason"
    assert dispatch_words(None, None) is None
    assert capi_words("skipped") == "capi skipped (not passed on to an ad platform)"
    assert capi_words("sent") == "capi sent"


def test_render_shows_an_unknown_warning_as_written() -> None:
    row = replace(_empty_row(), conversions_delivered=3, conversions_skipped=3)
    text = render(
        [_channel(A, "A")], "7d", replace(row, top_warning="<b>Pixel</b> off", top_warning_count=1)
    )
    assert (
        "\nMost frequent warning from AdTarget, on 1 conversion:"
        " AdTarget says “&lt;b&gt;Pixel&lt;/b&gt; off”\n" in text
    )


def _empty_row() -> StatsRow:
    return StatsRow(
        chat_id=A,
        since=None,
        now=NOW,
        visits=0,
        links_issued=0,
        joins_attributed=0,
        joins_campaign=0,
        joins_fallback=0,
        joins_organic=0,
        conversions_delivered=0,
        conversions_dispatched=0,
        conversions_skipped=0,
        conversions_pending=0,
        conversions_parked=0,
        leaves=0,
        still_subscribed=0,
        top_sources=(),
    )


def test_render_escapes_and_clips_sources() -> None:
    row = replace(
        _empty_row(),
        visits=1_234_567,
        top_sources=(SourceRow("<script>&a-very-long-source", "spring", 10, 0),),
    )
    text = render([_channel(A, "T")], "all", row)
    assert "Visits" + " " * 11 + "1,234,567\n" in text
    assert "Attribution" + " " * 14 + "–\n" in text
    assert "&lt;script&gt;&amp;a-very-l…      10    0%" in text
    assert "<script>" not in text


async def test_migration_fills_attribution_of_earlier_joins(tmp_path: Path) -> None:
    """Joins recorded before migration 004 get their utm / campaign copied over."""
    path = tmp_path / "old.db"
    migrations = ROOT / "storage" / "migrations"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        for version in (1, 2, 3):
            (script,) = migrations.glob(f"{version:03d}_*.sql")
            conn.executescript(script.read_text(encoding="utf-8"))
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, script.name))
        conn.execute(
            "INSERT INTO channels (chat_id, created_at, updated_at) VALUES (?, 0, 0)", (A,)
        )
        conn.execute(
            "INSERT INTO visits (id, temp_id, utm_source, utm_campaign, created_at, updated_at)"
            " VALUES (1, 't', 'facebook', 'spring', ?, ?)",
            (T, T),
        )
        conn.executemany(
            "INSERT INTO invite_links (id, url, chat_id, kind, name, visit_id, campaign,"
            " created_at) VALUES (?, ?, ?, ?, 'n', ?, ?, ?)",
            [(1, "u1", A, "visitor", 1, None, T), (2, "u2", A, "campaign", None, "promo", T)],
        )
        conn.executemany(
            "INSERT INTO joins (chat_id, user_id, kind, link_id, joined_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            [(A, 1, "attributed", 1, T), (A, 2, "campaign", 2, T), (A, 3, "organic", None, T)],
        )
    db = await open_database(path)
    try:
        row = await channel_stats(db, chat_id=A, since=None, now=NOW)
    finally:
        await db.close()
    assert row.top_sources == (
        SourceRow("campaign:promo", None, 1, 1),
        SourceRow("facebook", "spring", 1, 1),
    )
    assert (row.joins_attributed, row.joins_campaign, row.joins_organic) == (1, 1, 1)
