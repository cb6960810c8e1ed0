"""/chart's picture: joins per day by kind, leaves, and the attribution rate, as PNG.

Pure: days in, PNG bytes out. matplotlib is imported here only when a chart is
drawn (not when the bridge starts), and drawn through its object API on the Agg
canvas: no pyplot, so no global figure state and no display. Callers run
`render` in a worker thread; one chart is drawn at a time.

The channel's title is not drawn (it goes in the photo's caption): titles are
anyone's text, and a glyph the bundled font lacks would be a box and a warning.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from storage.daily import DAY, Day

WIDTH_PX = 1200
HEIGHT_PX = 675
DPI = 100

# Colours (Okabe–Ito, distinguishable with colour blindness), in stacking order.
KINDS = (
    ("attributed", "personal links", "#0072B2"),
    ("campaign", "campaign links", "#E69F00"),
    ("fallback", "fallback link", "#F0E442"),
    ("organic", "organic", "#999999"),
)
LEAVES_COLOUR = "#D55E00"
RATE_COLOUR = "#009E73"

# matplotlib's Agg drawing shares caches (fonts, text layout); one chart at a time.
_drawing = threading.Lock()


def day_label(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).strftime("%d %b")


def render(days: Sequence[Day], period: str) -> bytes:
    """A WIDTH_PX x HEIGHT_PX PNG: joins stacked by kind above zero, leaves below
    it, and the share of joins through the bot's links as a line (right axis)."""
    if not days:
        raise ValueError("no days to draw")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

    with _drawing:
        figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
        FigureCanvasAgg(figure)  # attaches itself to the figure
        joins_axis = figure.add_subplot()
        rate_axis = joins_axis.twinx()
        x = list(range(len(days)))
        bottom = [0] * len(days)
        for field, label, colour in KINDS:
            heights = [getattr(day, field) for day in days]
            joins_axis.bar(x, heights, bottom=bottom, color=colour, label=label, width=0.8)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        leaves = [-day.leaves for day in days]
        joins_axis.bar(x, leaves, color=LEAVES_COLOUR, label="leaves", width=0.8)
        joins_axis.axhline(0, color="#333333", linewidth=0.8)
        rates = [math.nan if d.attribution_rate is None else d.attribution_rate for d in days]
        rate_axis.plot(
            x, rates, color=RATE_COLOUR, marker="o", markersize=3, linewidth=2,
            label="share through your links (right axis)",
        )  # fmt: skip
        high = max(max(bottom), 1) * 1.1
        low = -max(max(day.leaves for day in days) * 1.1, high * 0.04)  # a margin at least
        joins_axis.set_ylim(low, high)
        # 0 % on the joins' zero line, 100 % just under the top.
        rate_axis.set_ylim(1.05 * low / high, 1.05)
        rate_axis.set_yticks([0, 0.25, 0.5, 0.75, 1])
        rate_axis.yaxis.set_major_formatter(PercentFormatter(1.0))
        joins_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        # Leaves are drawn below zero but are counts: 3 leaves read "3", not "−3".
        joins_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{abs(value):,.0f}"))
        joins_axis.set_ylabel("joins per day (leaves below zero)")
        step = max(1, math.ceil(len(days) / 15))
        joins_axis.set_xticks(x[::step], [day_label(day.day) for day in days[::step]])
        joins_axis.set_xlim(-0.6, len(days) - 0.4)
        joins_axis.grid(axis="y", alpha=0.3)
        joins, left = sum(d.joins for d in days), sum(d.leaves for d in days)
        joins_axis.set_title(
            f"Joins per day, {period} (UTC): {_count(joins, 'join')}, {_count(left, 'leave')}"
        )
        handles, labels = joins_axis.get_legend_handles_labels()
        rate_handles, rate_labels = rate_axis.get_legend_handles_labels()
        joins_axis.legend(
            handles + rate_handles,
            labels + rate_labels,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.06),
            ncol=len(labels) + len(rate_labels),
            fontsize="small",
            frameon=False,
        )
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _count(value: int, noun: str) -> str:
    return f"{value:,} {noun}{'' if value == 1 else 's'}"
