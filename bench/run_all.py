"""Every benchmark, small enough to finish in about ten minutes, then one summary table.

    make bench                                  # = .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py --full    # the issue's sizes (20 s runs, 20,000 events): ~30 min

Runs, in order: the Redis round trips of one webhook and one job (bench/round_trips.py), the
ingest benchmark against the floor and the baseline (bench/ingest.py), event-to-effect latency at
100 events/s (bench/latency.py), the drain against bare RQ and the drain through `up --workers 8`
with a 100 ms destination (bench/drain.py). Each keeps its own output;
the summary lists every target with what was measured. Needs a local Redis on 127.0.0.1:6379
(an empty database: --redis-url, default db 3) and, for the best load generator, Debian's wrk.
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from bench import drain, ingest, latency  # noqa: E402
from bench.common import BENCH_DIR, DEFAULT_REDIS_URL, PYTHON, ROOT, machine_table, print_header, table  # noqa: E402

QUICK = {
    "ingest": ["--seconds", "10", "--rounds", "3", "--max-rate", "9000"],
    "latency": ["--seconds", "10", "--rounds", "3"],
    "drain": ["--events", "2000", "--rounds", "3", "--slow-events", "600", "--slow-rounds", "3"],
}
FULL = {
    "ingest": ["--seconds", "20", "--rounds", "3", "--max-rate", "9000"],
    "latency": ["--seconds", "15", "--rounds", "3"],
    "drain": ["--events", "20000", "--rounds", "3", "--slow-events", "1200", "--slow-rounds", "3"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (about 30 minutes)")
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help=f"an empty database (default {DEFAULT_REDIS_URL})"
    )
    args = parser.parse_args()
    sizes = FULL if args.full else QUICK
    redis = ["--redis-url", args.redis_url]
    started = time.monotonic()
    print_header("Machine")
    print(machine_table())

    print_header("Redis round trips")
    subprocess.run([PYTHON, str(BENCH_DIR / "round_trips.py"), *redis], cwd=ROOT, check=True)

    ingest_outcome = ingest.run(ingest.parser().parse_args([*sizes["ingest"], *redis]))
    latency_outcome = latency.run(latency.parser().parse_args([*sizes["latency"], *redis]))
    drain_outcome = drain.run(drain.parser().parse_args([*sizes["drain"], *redis]))

    print_header(f"Summary ({(time.monotonic() - started) / 60:.1f} min)")
    figures = []
    for spec, f in ingest_outcome["targets"].items():
        ack = f"p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, p99.9 {f['p999_ms']:.1f} ms"
        rss = ", ".join(f"{name} {mb:.0f}" for name, mb in f["rss_mb"].items())
        figures.append(
            [
                f"ingest {spec} ({f['server']})",
                f"{f['accepted_per_s']:,.0f} accepted/s, {ack}, {f['errors']} errors; RSS MB: {rss}",
            ]
        )
    for rate, sides in latency_outcome["latency"].items():
        figures.append(
            [
                f"event -> effect at {rate} ev/s",
                ", ".join(f"{side} p50 {s['p50']:.1f} / p99 {s['p99']:.1f} ms" for side, s in sides.items()),
            ]
        )
    for name, f in drain_outcome.get("fast", {}).items():
        figures.append(
            [
                f"drain {name}",
                f"{f['rate']:,.0f} actions/s vs bare RQ {f['bare_rate']:,.0f} jobs/s "
                f"({f['ratio']:.2f}x), worker {f['worker_rss_mb']:.0f} MB",
            ]
        )
    slow = drain_outcome.get("slow")
    if slow:
        figures.append(
            [
                "drain up --workers 8, 100 ms destination",
                f"{slow['rate']:.1f} actions/s (ceiling {slow['ceiling']:.0f}); RSS MB: "
                + ", ".join(f"{name} {mb:.0f}" for name, mb in slow["rss"].items()),
            ]
        )
    print(table(["benchmark", "median"], figures))
    print()
    checks = ingest_outcome["checks"] + latency_outcome["checks"] + drain_outcome["checks"]
    print(table(["target", "measured", "wanted", ""], [c.row() for c in checks]))
    missed = [c for c in checks if not c.met]
    print(f"\n{len(checks) - len(missed)} of {len(checks)} targets met. Details: docs/performance.md")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
