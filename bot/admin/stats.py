"""/stats: periods and the Telegram message (HTML) for a channel's figures."""

from __future__ import annotations

import html
from collections.abc import Sequence

from bot.adtarget.dispatch import warning_words
from storage.channels import Channel
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
SOURCE_WIDTH = 18  # the top-sources table: source/campaign, joins, kept
MISSING = "–"
# All channels: the header names them, the first few when there are many.
NAMED_CHANNELS = 3
TITLE_CLIP = 24


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
            f" {_percent(row.kept):>5}"
        )
    return lines


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def header(covered: Sequence[Channel], period: str) -> str:
    """What the figures cover: one channel's title (and @username), or every channel
    named (the first NAMED_CHANNELS and how many more, past NAMED_CHANNELS + 1)."""
    label = _esc(PERIOD_LABELS.get(period, period))
    if len(covered) == 1:
        (channel,) = covered
        handle = f" (@{_esc(channel.username)})" if channel.username else ""
        return f"<b>{_esc(channel.title)}</b>{handle} · {label}"
    if not covered:
        return f"<b>All channels</b> · {label}\nnone tracked yet"
    names = [_esc(_clip(c.title, TITLE_CLIP)) for c in covered]
    if len(names) > NAMED_CHANNELS + 1:
        names = [*names[:NAMED_CHANNELS], f"{len(names) - NAMED_CHANNELS} more"]
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    return f"<b>All {len(covered)} channels</b> · {label}\n{listed}"


def _conversions(stats: StatsRow) -> list[str]:
    """Conversions by state; the delivered split by what AdTarget did with them."""
    unknown = stats.conversions_delivered - stats.conversions_dispatched
    unknown -= stats.conversions_skipped
    return [
        _line("Conversions"),
        _line("  delivered", _count(stats.conversions_delivered)),
        _line("    to ad platform", _count(stats.conversions_dispatched)),
        _line("    skipped", _count(stats.conversions_skipped)),
        # Only replays confirmed through /leads lack AdTarget's answer: rare, so the
        # line shows only when there are some.
        *([_line("    not known", _count(unknown))] if unknown else []),
        _line("  pending", _count(stats.conversions_pending)),
        _line("  parked", _count(stats.conversions_parked)),
    ]


def _warning(stats: StatsRow) -> str | None:
    if stats.top_warning is None:
        return None
    count = stats.top_warning_count
    on = f"{_count(count)} conversion" + ("" if count == 1 else "s")
    return f"Most frequent warning from AdTarget, on {on}: {_esc(warning_words(stats.top_warning))}"


def render(covered: Sequence[Channel], period: str, stats: StatsRow) -> str:
    """The /stats message: the header, the figures as a monospace table, AdTarget's
    most frequent warning in plain words, then the top sources."""
    lines = [
        _line("Visits", _count(stats.visits)),
        _line("Links issued", _count(stats.links_issued)),
        _line("Joins", _count(stats.joins)),
        _line("  attributed", _count(stats.joins_attributed)),
        _line("  campaign", _count(stats.joins_campaign)),
        _line("  fallback", _count(stats.joins_fallback)),
        _line("  organic", _count(stats.joins_organic)),
        _line("Attribution", _percent(stats.attribution_rate)),
        # Of the joins above; a leave counts whoever left in the period, so the two
        # need not add up to the joins.
        _line("Still subscribed", _count(stats.still_subscribed)),
        _line("Left (any member)", _count(stats.leaves)),
        *_conversions(stats),
    ]
    warning = _warning(stats)
    return "\n".join(
        [
            header(covered, period),
            _pre(lines),
            *([warning] if warning is not None else []),
            _pre(_sources(stats)),
        ]
    )


def _pre(lines: list[str]) -> str:
    return "<pre>" + _esc("\n".join(lines)) + "</pre>"
