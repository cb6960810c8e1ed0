"""`make bench`: every figure against its target and the naive baseline, one table.

Each figure is the median of `--runs` runs (min and max beside it), measured in
this one invocation, so the bridge and the baseline share the machine's state.

    python -m bench.suite [--runs 3] [--quick] [--latency-only | --rss-only | --pg-only]

Then the PostgreSQL figures (bench/pg.py), when a PostgreSQL server can be started.
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
from bench import pg as pg_bench
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
            f"{_number(min(self.values))} – {_number(max(self.values))}"
            if len(self.values) > 1
            else "1 run"
        )
        return f"{_number(median)} {self.unit}", spread, self.target


def _number(value: float) -> str:
    # Two decimals below 10: a 1.04x ratio or a 2.63 ms p50 must not read as 1.0 or 2.6.
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"


async def repeat(runs: int, measure: Callable[[], Awaitable[float]]) -> list[float]:
    return [await measure() for _ in range(runs)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--rss-joins",
        type=int,
        default=None,
        help="joins in the peak-RSS runs (default 20,000; `make bench-rss`: 100,000)",
    )
    parser.add_argument("--rss-only", action="store_true", help="only the peak-RSS pair")
    parser.add_argument(
        "--latency-only", action="store_true", help="only the lone-join latency, both sides"
    )
    parser.add_argument("--pg-only", action="store_true", help="only the PostgreSQL figures")
    args = parser.parse_args()
    rss_joins = args.rss_joins or (5_000 if args.quick else 20_000)
    runs, quick = args.runs, args.quick
    started = time.monotonic()
    figures: list[Figure] = []

    def add(name: str, values: list[float], unit: str, target: str, met: bool | None) -> None:
        figures.append(Figure(name, values, unit, target, met))
        print(f"  measured: {name}: {_number(statistics.median(values))} {unit}", flush=True)

    if args.rss_only:
        rss, naive_rss = await asyncio.gather(
            flows.peak_rss("bot", rss_joins), flows.peak_rss("bench.naive_bot", rss_joins)
        )
        add_rss(add, rss, naive_rss, rss_joins)
        print_table(figures, "1 run each side, side by side", started)
        return

    if args.pg_only:
        note = await add_pg(add, runs, quick)
        print_table(figures, note, started)
        return

    if args.latency_only:
        await add_latency(add, runs, seconds=4 if quick else 6)
        print_table(figures, f"{runs} run(s) per figure, bridge and baseline alternated", started)
        return

    # ---- Quiet phase: throughput and latency figures, one measurement at a time.
    joins = 1000 if quick else 3000
    burst = 500
    rates, db_per_100k = await flows.ingest_bridge(joins, runs)
    # The baseline's POSTs all start at once (handle_as_tasks) and its rate only
    # falls as a burst grows, so a smaller burst flatters it, not the bridge.
    naive_ingest = await repeat(runs, lambda: flows.ingest_naive(burst))
    ratio = statistics.median(rates) / statistics.median(naive_ingest)
    add(
        f"ingest, {joins:,}-join burst (bridge, courier off)",
        rates,
        "joins/s",
        ">= 3,000 and >= baseline",
        statistics.median(rates) >= 3000 and ratio >= 1,
    )
    add(f"ingest, {burst:,}-join burst (naive baseline)", naive_ingest, "joins/s", "-", None)
    add("ingest ratio bridge/baseline", [ratio], "x", ">= 1", ratio >= 1)

    await add_latency(add, runs, seconds=4 if quick else 6)

    tracker_runs = [await tracker_bench.one_run(4 if quick else 8) for _ in range(runs)]
    invite99 = [r["invite"][1] for r in tracker_runs]
    visit99 = [r["visit"][1] for r in tracker_runs]
    add(
        "tracker invite p99 at 200/s", invite99, "ms", "<= 20 ms", statistics.median(invite99) <= 20
    )
    add("tracker visit p99 at 500/s", visit99, "ms", "<= 20 ms", statistics.median(visit99) <= 20)

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

    # ---- Background block, run side by side: the long runs whose figures do not
    # depend on having the CPU to themselves (memory, a paced drain, seeding).
    rows = 500 if quick else 2000
    stats_size = 100_000 if quick else 1_000_000
    print(f"  background: peak RSS x2, {runs} drains, /stats seed ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "stats.db"
        await stats_bench.create(db)
        now = time.time()
        rss_task = asyncio.create_task(flows.peak_rss("bot", rss_joins))
        naive_rss_task = asyncio.create_task(flows.peak_rss("bench.naive_bot", rss_joins))
        seeding = asyncio.create_task(
            asyncio.to_thread(stats_bench.seed, db, joins=stats_size, visits=stats_size, now=now)
        )
        drains = await asyncio.gather(*(flows.drain(rows, 1200, 50) for _ in range(runs)))
        rss, naive_rss, _ = await asyncio.gather(rss_task, naive_rss_task, seeding)
        # ---- Quiet again: /stats on the seeded database.
        timings = await stats_bench.measure(db, runs=max(runs, 3), now=now)

    shares = [share * 100 for share, _ in drains]
    limited = [float(n) for _, n in drains]
    add(
        f"drain {rows:,} rows at 1,200/min: sustained rate",
        shares,
        "% of limit",
        ">= 95%",
        statistics.median(shares) >= 95,
    )
    add("drain: 429s drawn", limited, "", "0", max(limited) == 0)
    add("aiogram import alone, RSS", [m for _, m in floor], "MB", "floor", None)
    add_rss(add, rss, naive_rss, rss_joins)
    one = max((t for scope, _, t in timings if scope.startswith("one")), key=statistics.median)
    every = max((t for scope, _, t in timings if scope.startswith("all")), key=statistics.median)
    add(
        f"/stats one channel, slowest period ({stats_size:,} joins)",
        one,
        "ms",
        "<= 300 ms",
        statistics.median(one) <= 300,
    )
    add(
        f"/stats all channels, slowest period ({stats_size:,} joins)",
        every,
        "ms",
        "<= 300 ms",
        statistics.median(every) <= 300,
    )
    add(
        "database size per 100,000 attributed joins",
        [db_per_100k / 1e6],
        "MB",
        "report",
        None,
    )

    pg_note = await add_pg(add, runs, quick)
    print_table(
        figures,
        f"{runs} runs per figure; peak RSS 1 run each side, measured side by side with the"
        f" drains and the /stats seeding; {pg_note}",
        started,
    )


Add = Callable[[str, list[float], str, str, bool | None], None]

# The owner accepts a lone join at parity with the naive baseline rather than
# faster: the bridge commits the join and its conversion before the POST, and
# the baseline keeps nothing. Parity: p50 at most 15 % above the baseline's (a
# durable commit's share of ~3 ms), p99 no higher than the baseline's.
P50_RATIO_MAX = 1.15
P99_RATIO_MAX = 1.0


async def add_latency(add: Add, runs: int, *, seconds: float) -> None:
    """Join -> POST at a steady 50 joins/s, bridge and baseline."""
    # Alternated, bridge then baseline: the two are within a millisecond of each
    # other, and this machine's speed drifts by more than that over a minute.
    lat: list[tuple[float, float]] = []
    naive_lat: list[tuple[float, float]] = []
    for _ in range(runs):
        lat.append(await flows.latency("bot", rate=50, seconds=seconds))
        naive_lat.append(await flows.latency("bench.naive_bot", rate=50, seconds=seconds))
    p50, p99 = [a for a, _ in lat], [b for _, b in lat]
    naive_p50, naive_p99 = [a for a, _ in naive_lat], [b for _, b in naive_lat]
    add("join -> POST p50 at 50/s (bridge)", p50, "ms", "<= 50 ms", statistics.median(p50) <= 50)
    add("join -> POST p99 at 50/s (bridge)", p99, "ms", "<= 250 ms", statistics.median(p99) <= 250)
    add("join -> POST p50 at 50/s (baseline)", naive_p50, "ms", "-", None)
    add("join -> POST p99 at 50/s (baseline)", naive_p99, "ms", "-", None)
    ratio50 = statistics.median(p50) / statistics.median(naive_p50)
    ratio99 = statistics.median(p99) / statistics.median(naive_p99)
    add(
        "latency ratio bridge/baseline (p50)",
        [ratio50],
        "x",
        f"<= {P50_RATIO_MAX:.2f} (at most 15 % above)",
        ratio50 <= P50_RATIO_MAX,
    )
    add(
        "latency ratio bridge/baseline (p99)",
        [ratio99],
        "x",
        f"<= {P99_RATIO_MAX:.2f} (no higher)",
        ratio99 <= P99_RATIO_MAX,
    )


async def add_pg(add: Add, runs: int, quick: bool) -> str:
    """The PostgreSQL section (issue 20), within ~4 minutes: at most 2 runs of each
    tracker configuration and of ingest, 5 failovers. Returns the table's note."""
    server = pg_bench.start_server()
    if isinstance(server, str):
        print(f"  PostgreSQL figures skipped: no server could be started ({server})", flush=True)
        return f"PostgreSQL figures skipped ({server})"
    pg_runs, kills = min(runs, 2), 5
    with server:
        found = await pg_bench.measure(
            server,
            runs=pg_runs,
            seconds=2 if quick else 4,
            joins=1000 if quick else 2000,
            kills=kills,
        )
    for name, results in found.tracker.items():
        add(
            f"tracker visits/s, {pg_bench.THROUGHPUT} clients, {name}",
            [r["visits/s"][0] for r in results],
            "visits/s",
            "report",
            None,
        )
        for kind, rate in (("visit", 500), ("invite", 200)):
            add(
                f"tracker {kind} p99 {rate}/s, {name}",
                [r[kind][1] for r in results],
                "ms",
                "report",
                None,
            )
    add(
        f"ingest on PostgreSQL, {found.ingest_joins:,}-join burst",
        found.ingest,
        "joins/s",
        ">= 1,000",
        statistics.median(found.ingest) >= 1000,
    )
    add(
        "failover: SIGKILL to new leader's getUpdates",
        found.failover,
        "s",
        "<= 10 s",
        statistics.median(found.failover) <= 10,
    )
    return f"PostgreSQL: {pg_runs} run(s) per figure, {kills} failovers"


def add_rss(
    add: Add,
    rss: float,
    naive_rss: float,
    joins: int,
) -> None:
    add(
        f"peak RSS, {joins:,} joins (bridge)",
        [rss],
        "MB",
        f"<= baseline + 40 ({naive_rss + 40:.0f})",
        rss <= naive_rss + 40,
    )
    add(f"peak RSS, {joins:,} joins (baseline)", [naive_rss], "MB", "-", None)


def print_table(figures: list[Figure], runs_note: str, started: float) -> None:
    print()
    print(f"{'figure':<52} {'median':>16} {'min – max':>22}  {'target':<28} met")
    for figure in figures:
        median, spread, target = figure.cells()
        met = "-" if figure.met is None else ("yes" if figure.met else "NO")
        print(f"{figure.name:<52} {median:>16} {spread:>22}  {target:<28} {met}")
    print(f"\n{runs_note}; {(time.monotonic() - started) / 60:.1f} min in all")


if __name__ == "__main__":
    asyncio.run(main())
