"""`make bench`: every figure against its target and the naive baseline, one table.

Each figure is the median of `--runs` runs (min and max beside it), measured in
this one invocation, so the bridge and the baseline share the machine's state.

    python -m bench.suite [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench import flows
from bench import stats as stats_bench
from bench import tracker as tracker_bench


@dataclass
class Figure:
    name: str
    values: list[float]
    unit: str
    target: str
    met: bool | None  # None: reported, no target

    def cells(self) -> tuple[str, str, str]:
        median = statistics.median(self.values)
        spread = (
            f"{min(self.values):,.1f} – {max(self.values):,.1f}"
            if len(self.values) > 1
            else "1 run"
        )
        return f"{median:,.1f} {self.unit}", spread, self.target


async def repeat(runs: int, measure: Callable[[], Awaitable[float]]) -> list[float]:
    return [await measure() for _ in range(runs)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    runs, quick = args.runs, args.quick
    started = time.monotonic()
    figures: list[Figure] = []

    def add(name: str, values: list[float], unit: str, target: str, met: bool | None) -> None:
        figures.append(Figure(name, values, unit, target, met))
        print(f"  measured: {name}: {statistics.median(values):,.1f} {unit}", flush=True)

    # One burst of joins; the baseline's POSTs all start at once (handle_as_tasks),
    # which slows it badly as the burst grows, so both sides get the same size.
    joins = 500 if quick else 1000
    ingest = [await flows.ingest_bridge(joins) for _ in range(runs)]
    naive_ingest = await repeat(runs, lambda: flows.ingest_naive(joins))
    rates = [r for r, _ in ingest]
    add(
        "ingest (bridge, courier off)",
        rates,
        "joins/s",
        ">= 3,000 and >= baseline",
        statistics.median(rates) >= 3000
        and statistics.median(rates) >= statistics.median(naive_ingest),
    )
    add("ingest (naive baseline)", naive_ingest, "joins/s", "-", None)
    add(
        "ingest ratio bridge/baseline",
        [statistics.median(rates) / statistics.median(naive_ingest)],
        "x",
        ">= 1",
        statistics.median(rates) >= statistics.median(naive_ingest),
    )

    seconds = 4 if quick else 10
    lat = [await flows.latency("bot", rate=50, seconds=seconds) for _ in range(runs)]
    naive_lat = [
        await flows.latency("bench.naive_bot", rate=50, seconds=seconds) for _ in range(runs)
    ]
    p50, p99 = [a for a, _ in lat], [b for _, b in lat]
    add("join -> POST p50 at 50/s (bridge)", p50, "ms", "<= 50 ms", statistics.median(p50) <= 50)
    add("join -> POST p99 at 50/s (bridge)", p99, "ms", "<= 250 ms", statistics.median(p99) <= 250)
    add("join -> POST p50 at 50/s (baseline)", [a for a, _ in naive_lat], "ms", "-", None)
    add("join -> POST p99 at 50/s (baseline)", [b for _, b in naive_lat], "ms", "-", None)
    add(
        "latency ratio bridge/baseline (p50)",
        [statistics.median(p50) / statistics.median([a for a, _ in naive_lat])],
        "x",
        "report",
        None,
    )

    rows = 500 if quick else 2000
    drained = [await flows.drain(rows, 1200, 50) for _ in range(runs)]
    shares = [share * 100 for share, _ in drained]
    limited = [float(n) for _, n in drained]
    add(
        f"drain {rows} rows at 1,200/min: sustained rate",
        shares,
        "% of limit",
        ">= 95%",
        statistics.median(shares) >= 95,
    )
    add("drain: 429s drawn", limited, "", "0", max(limited) == 0)

    tracker_runs = [await tracker_bench.one_run(5 if quick else 10) for _ in range(runs)]
    invite99 = [r["invite"][1] for r in tracker_runs]
    visit99 = [r["visit"][1] for r in tracker_runs]
    add(
        "tracker invite p99 at 200/s", invite99, "ms", "<= 20 ms", statistics.median(invite99) <= 20
    )
    add("tracker visit p99 at 500/s", visit99, "ms", "<= 20 ms", statistics.median(visit99) <= 20)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "stats.db"
        size = 100_000 if quick else 1_000_000
        await stats_bench.create(db)
        now = time.time()
        stats_bench.seed(db, joins=size, visits=size, now=now)
        timings = await stats_bench.measure(db, runs=max(runs, 3), now=now)
    one = max((t for scope, _, t in timings if scope.startswith("one")), key=statistics.median)
    every = max((t for scope, _, t in timings if scope.startswith("all")), key=statistics.median)
    add(
        f"/stats one channel, slowest period ({size:,} joins)",
        one,
        "ms",
        "<= 300 ms",
        statistics.median(one) <= 300,
    )
    add(
        f"/stats all channels, slowest period ({size:,} joins)",
        every,
        "ms",
        "<= 300 ms",
        statistics.median(every) <= 300,
    )

    floor = [await flows.aiogram_floor() for _ in range(runs)]
    boot = await repeat(runs, flows.startup)
    import_s = [s for s, _ in floor]
    add("aiogram import alone", import_s, "s", "floor", None)
    add(
        "start to first getUpdates (empty db)",
        boot,
        "s",
        f"<= import + 1 s ({statistics.median(import_s) + 1:.1f})",
        statistics.median(boot) <= statistics.median(import_s) + 1,
    )

    # 100,000 is the target size; the fakes in this process set the pace (about
    # 200 joins/s end to end), so the default run uses 20,000 to stay in budget.
    rss_joins = 5_000 if quick else 20_000
    rss = [await flows.peak_rss("bot", rss_joins)]
    naive_rss = [await flows.peak_rss("bench.naive_bot", rss_joins)]
    add("aiogram import alone, RSS", [m for _, m in floor], "MB", "floor", None)
    add(
        f"peak RSS, {rss_joins:,} joins (bridge)",
        rss,
        "MB",
        f"<= baseline + 40 ({naive_rss[0] + 40:.0f})",
        rss[0] <= naive_rss[0] + 40,
    )
    add(f"peak RSS, {rss_joins:,} joins (baseline)", naive_rss, "MB", "-", None)
    add(
        "database size per 100,000 attributed joins",
        [size / 1e6 for _, size in ingest],
        "MB",
        "report",
        None,
    )

    print()
    print(f"{'figure':<52} {'median':>16} {'min – max':>22}  {'target':<28} met")
    for figure in figures:
        median, spread, target = figure.cells()
        met = "-" if figure.met is None else ("yes" if figure.met else "NO")
        print(f"{figure.name:<52} {median:>16} {spread:>22}  {target:<28} {met}")
    print(
        f"\n{runs} runs per figure (peak RSS: 1 run each side); "
        f"{(time.monotonic() - started) / 60:.1f} min in all"
    )


if __name__ == "__main__":
    asyncio.run(main())
