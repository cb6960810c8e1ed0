"""/stats: periods and the Telegram message (HTML) for a channel's figures."""

from __future__ import annotations

import html

from storage.stats import StatsRow

PERIODS = ("today", "7d", "30d", "all")
PERIOD_LABELS = {
    "today": "today (UTC)",
    "7d": "last 7 days",
    "30d": "last 30 days",
    "all": "all time",
}
DAY = 86400

WIDTH = 26  # the figures table: label, value right-aligned under "joins" below
SOURCE_WIDTH = 18  # the top-sources table: source/campaign, joins, retention
MISSING = "–"


def period_start(period: str, now: float) -> float | None:
    """The start of `period` at `now` (Unix seconds); None for all time."""
    if period == "today":
        return float(int(now // DAY) * DAY)  # 00:00 UTC
    if period == "7d":
        return now - 7 * DAY
    if period == "30d":
        return now - 30 * DAY
    if period == "all":
        return None
    raise ValueError(f"unknown period {period!r}; expected one of {', '.join(PERIODS)}")


def _count(value: int) -> str:
    return f"{value:,}"


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{round(value * 100)}%"


def _line(label: str, value: str = "") -> str:
    if not value:
        return label
    return label + " " * max(1, WIDTH - len(label) - len(value)) + value


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _sources(stats: StatsRow) -> list[str]:
    if not stats.top_sources:
        return ["Top sources: none yet"]
    lines = [f"{'Top sources':<{SOURCE_WIDTH}} {'joins':>7} {'kept':>5}"]
    for row in stats.top_sources:
        name = row.source if row.campaign is None else f"{row.source}/{row.campaign}"
        lines.append(
            f"{_clip(name, SOURCE_WIDTH):<{SOURCE_WIDTH}} {_count(row.joins):>7}"
            f" {_percent(row.retention):>5}"
        )
    return lines


def render(title: str, period: str, stats: StatsRow) -> str:
    """The /stats message: a bold title line, then the figures as a monospace table."""
    label = PERIOD_LABELS.get(period, period)
    lines = [
        _line("Visits", _count(stats.visits)),
        _line("Links issued", _count(stats.links_issued)),
        _line("Joins", _count(stats.joins)),
        _line("  attributed", _count(stats.joins_attributed)),
        _line("  campaign", _count(stats.joins_campaign)),
        _line("  fallback", _count(stats.joins_fallback)),
        _line("  organic", _count(stats.joins_organic)),
        _line("Attribution", _percent(stats.attribution_rate)),
        _line("Conversions"),
        _line("  delivered", _count(stats.conversions_delivered)),
        _line("  pending", _count(stats.conversions_pending)),
        _line("  parked", _count(stats.conversions_parked)),
        _line("Leaves", _count(stats.leaves)),
        _line("Net present", _count(stats.net_present)),
        "",
        *_sources(stats),
    ]
    table = html.escape("\n".join(lines), quote=False)
    return f"<b>{html.escape(title, quote=False)}</b> · {html.escape(label)}\n<pre>{table}</pre>"
