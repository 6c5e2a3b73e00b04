"""Ingest benchmark: accepted events/s and ack latency of `salon-bridge serve`, against a baseline.

    .venv/bin/python bench/ingest.py                          # 3 rounds of 20 s: bridge, floor, baseline
    .venv/bin/python bench/ingest.py --seconds 5 --rounds 3   # a quick look
    .venv/bin/python bench/ingest.py --targets bridge,baseline,watch3
    .venv/bin/python bench/ingest.py --targets bridge@2x4,bridge@4x1,bridge@3x4,baseline
    .venv/bin/python bench/ingest.py --py-spy /tmp/profiles   # flame graphs of round 1

Targets (NAME or NAME@WORKERSxTHREADS; default size from --workers/--threads):
  bridge    `salon-bridge serve`, as deployed: the CLI, a config file, granian, INFO logs to a file
  baseline  bench/baseline_app.py: HMAC check, SET NX, RQ enqueue (3 round trips), same server options
  floor     bench/floor_app.py: HMAC check and one script (SET NX, HSET, EXPIRE, LPUSH), behind serve's front
  watch3    the bridge with the earlier 3-round-trip ingest (bench/prototypes/watch_ingest.py)

Every target runs as its own server for the whole benchmark; the load goes to one at a time,
interleaved (A, B, A, B, ...). Before each measurement the bench Redis database is emptied and
the server warmed up. The load: wrk (or the Python generator), 16 keep-alive connections,
distinct signed events of the 13 types, 1-2 KB each. Reported per target: the median over the
rounds of accepted (202) events/s, of p50/p99/p99.9 ack latency and of the CPU time per accepted
event of the server's processes and of Redis; errors (anything but a 2xx, socket errors, timeouts
over 10 s) summed; the median of the per-round ratios to the floor and to the baseline; the
resident memory of the server processes after the last round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from redis import Redis  # noqa: E402

from bench.common import (  # noqa: E402
    BENCH_DIR,
    DEFAULT_REDIS_URL,
    PYTHON,
    VENV_BIN,
    BenchRedis,
    Check,
    Child,
    cpu_seconds,
    descendants,
    free_port,
    machine_table,
    make_events,
    median,
    print_header,
    redis_cpu_seconds,
    rss_mb,
    table,
    wait_for_port,
    write_config,
)
from bench.loadgen import LoadResult, ceiling, have_wrk, run_load, write_bodies  # noqa: E402

# Where each target leaves what it accepted: the list whose length is checked against the 202s.
STORED_IN = {
    "bridge": "rq:queue:salon-bridge",
    "watch3": "rq:queue:salon-bridge",
    "baseline": "rq:queue:bench-baseline",
    "floor": "bench-floor",
}
P99_TARGET_MS = 15.0
RATIO_TARGET = 1.5  # to the baseline (issue 9)
FLOOR_TARGET = 0.8  # to the floor (issue 22)


@dataclass
class Target:
    """One server under test."""

    spec: str
    kind: str
    workers: int
    threads: int
    port: int = 0
    child: Child | None = None
    results: list[LoadResult] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    # Per round, CPU milliseconds per accepted event: of the server's processes, of Redis.
    server_cpu_ms: list[float] = field(default_factory=list)
    redis_cpu_ms: list[float] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)

    def processes(self) -> list[int]:
        assert self.child is not None
        return [self.child.pid, *descendants(self.child.pid)]

    def command(self, config: Path, redis_url: str) -> list[str]:
        size = ["--workers", str(self.workers), "--threads", str(self.threads)]
        where = ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.kind == "bridge":
            return [str(VENV_BIN / "salon-bridge"), "serve", "--config", str(config), *where, *size]
        if self.kind == "watch3":
            script = BENCH_DIR / "prototypes" / "watch_ingest.py"
            return [PYTHON, str(script), "serve", "--config", str(config), *where, *size]
        app = "floor_app.py" if self.kind == "floor" else "baseline_app.py"
        return [PYTHON, str(BENCH_DIR / app), *where, *size, "--redis-url", redis_url]


def parse_targets(text: str, workers: int, threads: int) -> list[Target]:
    targets = []
    for spec in [s.strip() for s in text.split(",") if s.strip()]:
        kind, _, size = spec.partition("@")
        if kind not in STORED_IN:
            raise SystemExit(f"unknown target {kind!r}: choose among {', '.join(STORED_IN)}")
        w, t = (int(n) for n in size.split("x")) if size else (workers, threads)
        targets.append(Target(spec, kind, w, t))
    if len({t.spec for t in targets}) != len(targets):
        raise SystemExit("each target may appear once")
    return targets


def server_rss(target: Target) -> dict[str, float]:
    """Resident MB of the server's master and of each of its worker processes."""
    assert target.child is not None
    out = {"master": rss_mb(target.child.pid)}
    for n, pid in enumerate(descendants(target.child.pid), 1):
        out[f"worker {n}"] = rss_mb(pid)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    targets = parse_targets(args.targets, args.workers, args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="sb-bench-ingest-"))
    print(f"logs and bodies in {workdir}")
    bench_redis = BenchRedis(args.redis_url).claim()
    try:
        return _run(args, targets, workdir, bench_redis)
    finally:
        for target in targets:
            if target.child is not None:
                target.child.stop()
        bench_redis.release()


def _run(args: argparse.Namespace, targets: list[Target], workdir: Path, bench_redis: BenchRedis) -> dict[str, Any]:
    config = write_config(workdir / "config.yaml", args.redis_url, "http://127.0.0.1:9/never-called")
    count = int(args.seconds * args.max_rate)
    print(f"preparing {count:,} distinct signed events ...", flush=True)
    bodies = write_bodies(workdir / "bodies.txt", make_events(count, prefix="ingest"))
    warm = write_bodies(workdir / "warmup.txt", make_events(max(2000, int(args.warmup * args.max_rate)), prefix="warm"))
    for target in targets:
        target.port = free_port()
        target.child = Child(f"server-{target.spec.replace('@', '-')}", target.command(config, args.redis_url), workdir)
    for target in targets:
        assert target.child is not None
        wait_for_port(target.port, target.child)

    redis = Redis.from_url(args.redis_url)
    tool = "wrk" if have_wrk() and not args.python else "python"
    print(f"load: {tool}, {args.connections} connections, {args.seconds:g} s per run, {args.rounds} rounds\n")
    for round_number in range(1, args.rounds + 1):
        for target in targets:
            assert target.child is not None
            url = f"http://127.0.0.1:{target.port}/webhooks"
            bench_redis.reset()
            run_load(url, warm, args.connections, args.warmup, python=args.python)
            bench_redis.reset()
            spy = _start_py_spy(args, target, workdir) if args.py_spy and round_number == 1 else None
            cpu_before, redis_before = cpu_seconds(target.processes()), redis_cpu_seconds(redis)
            result = run_load(url, bodies, args.connections, args.seconds, python=args.python)
            accepted = max(result.count(202), 1)
            target.server_cpu_ms.append((cpu_seconds(target.processes()) - cpu_before) * 1000 / accepted)
            target.redis_cpu_ms.append((redis_cpu_seconds(redis) - redis_before) * 1000 / accepted)
            if spy is not None:
                spy.process.wait(args.seconds + 60)
                spy.stop()
            target.child.check_alive()
            stored = int(redis.llen(STORED_IN[target.kind]))
            target.results.append(result)
            target.stored.append(stored)
            print(
                f"round {round_number} {target.spec:<14} accepted {result.rate(202):8,.0f}/s  "
                f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  p99.9 {result.p999_ms:6.2f} ms  "
                f"errors {result.errors}  statuses {dict(sorted(result.statuses.items()))}  queued {stored:,}  "
                f"CPU/event server {target.server_cpu_ms[-1]:.3f} ms, Redis {target.redis_cpu_ms[-1]:.3f} ms"
                + ("  BODIES WRAPPED (raise --max-rate)" if result.wrapped else ""),
                flush=True,
            )
    for target in targets:
        target.rss = server_rss(target)
    redis.close()
    gen = ceiling(min(args.seconds, 5), args.connections, args.python, workdir) if args.ceiling else None
    return report(args, targets, gen)


def _start_py_spy(args: argparse.Namespace, target: Target, workdir: Path) -> Child | None:
    assert target.child is not None
    out = Path(args.py_spy)
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(VENV_BIN / "py-spy"),
        "record",
        "--pid",
        str(target.child.pid),
        "--subprocesses",
        "--idle",
        "--duration",
        str(int(args.seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "-o",
        str(out / f"ingest-{target.spec.replace('@', '-')}.txt"),
    ]
    return Child(f"py-spy-{target.spec.replace('@', '-')}", command, workdir)


def _reference(target: Target, targets: list[Target], kind: str) -> Target | None:
    """The `kind` target with the same server settings as `target`, else the first of that kind."""
    of_kind = [t for t in targets if t.kind == kind]
    same = [t for t in of_kind if (t.workers, t.threads) == (target.workers, target.threads)]
    return (same or of_kind or [None])[0]


def _ratio(target: Target, reference: Target | None) -> float:
    """Median over the rounds of accepted/s against the reference's, round by round (interleaved)."""
    if reference is None or reference is target:
        return float("nan")
    pairs = zip(target.results, reference.results, strict=True)
    return median(a.rate(202) / b.rate(202) for a, b in pairs if b.rate(202))


def report(args: argparse.Namespace, targets: list[Target], gen: LoadResult | None) -> dict[str, Any]:
    rows, summary = [], {}
    for target in targets:
        baseline, floor = _reference(target, targets, "baseline"), _reference(target, targets, "floor")
        figures = {
            "accepted_per_s": median(r.rate(202) for r in target.results),
            "p50_ms": median(r.p50_ms for r in target.results),
            "p99_ms": median(r.p99_ms for r in target.results),
            "p999_ms": median(r.p999_ms for r in target.results),
            "errors": sum(r.errors for r in target.results),
            "wrapped": any(r.wrapped for r in target.results),
            "ratio_to_baseline": _ratio(target, baseline),
            "ratio_to_floor": _ratio(target, floor),
            "baseline": baseline.spec if baseline is not None and baseline is not target else None,
            "floor": floor.spec if floor is not None and floor is not target else None,
            "rss_mb": target.rss,
            "server": f"{target.workers} workers x {target.threads} threads",
            "server_cpu_ms": median(target.server_cpu_ms),
            "redis_cpu_ms": median(target.redis_cpu_ms),
        }
        summary[target.spec] = figures
        workers_rss = [v for k, v in target.rss.items() if k != "master"]
        ratios = [f"{figures[f'ratio_to_{kind}']:.2f}x" if figures[kind] else "-" for kind in ("floor", "baseline")]
        rows.append(
            [
                target.spec,
                figures["server"],
                figures["accepted_per_s"],
                figures["p50_ms"],
                figures["p99_ms"],
                figures["p999_ms"],
                figures["errors"],
                *ratios,
                f"{figures['server_cpu_ms']:.3f} / {figures['redis_cpu_ms']:.3f}",
                f"{target.rss.get('master', 0):.0f} / {max(workers_rss, default=0):.0f}",
            ]
        )
    print_header(f"Ingest: median of {args.rounds} rounds of {args.seconds:g} s, {args.connections} connections")
    headers = ["target", "server", "accepted/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "vs floor", "vs baseline",
               "CPU ms/event server / Redis", "RSS MB master / worker"]  # fmt: skip
    print(table(headers, rows))
    if gen is not None:
        fastest = max(s["accepted_per_s"] for s in summary.values())
        print(
            f"\nload generator ({gen.tool}) against a trivial server: {gen.rate():,.0f} requests/s "
            f"({gen.rate() / fastest:.0f}x the fastest target): it is not the bottleneck"
        )
    checks = []
    for spec, figures in summary.items():
        if not spec.startswith("bridge"):
            continue
        for kind, wanted in (("floor", FLOOR_TARGET), ("baseline", RATIO_TARGET)):
            if figures[kind] is not None:
                ratio = figures[f"ratio_to_{kind}"]
                checks.append(Check(f"ingest {spec} / {kind}", f"{ratio:.2f}x", f">= {wanted}x", ratio >= wanted))
        p99 = figures["p99_ms"]
        checks.append(
            Check(f"ingest {spec} p99 ack", f"{p99:.1f} ms", f"<= {P99_TARGET_MS:g} ms", p99 <= P99_TARGET_MS)
        )
        errors = figures["errors"] + (1 if figures["wrapped"] else 0)
        checks.append(Check(f"ingest {spec} errors", str(figures["errors"]), "0", errors == 0))
    if checks:
        print()
        print(table(["target", "measured", "wanted", ""], [c.row() for c in checks]))
    return {"targets": summary, "checks": checks, "generator_rps": gen.rate() if gen else None}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20, help="length of each measured run (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians (default 3)")
    p.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections (default 16)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of load before each run, not counted (default 2)")
    p.add_argument("--targets", default="bridge,floor,baseline", help="comma-separated (default bridge,floor,baseline)")
    p.add_argument("--workers", type=int, default=2, help="web worker processes of every target (default 2, as serve)")
    p.add_argument("--threads", type=int, default=4, help="threads per web worker (default 4, as serve)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"an empty database (default {DEFAULT_REDIS_URL})")
    p.add_argument("--max-rate", type=float, default=4000, help="events/s to prepare bodies for (default 4000)")
    p.add_argument("--python", action="store_true", help="use the Python load generator even when wrk is there")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the load generator check")
    p.add_argument("--py-spy", metavar="DIR", help="record round 1 of each target with py-spy into DIR")
    return p


def main() -> None:
    args = parser().parse_args()
    print(machine_table())
    outcome = run(args)
    sys.exit(0 if all(c.met for c in outcome["checks"]) else 1)


if __name__ == "__main__":
    main()
