"""Drain benchmark: how fast workers empty a backlog, against bare RQ, and worker memory after it.

    .venv/bin/python bench/drain.py                       # both parts, the issue's sizes
    .venv/bin/python bench/drain.py --part fast --events 2000 --rounds 3
    .venv/bin/python bench/drain.py --part slow --slow-events 1200
    .venv/bin/python bench/drain.py --part fast --worker-class fork   # RQ's forking Worker, both sides
    .venv/bin/python bench/drain.py --part fast --variants bridge,fork   # the forking worker, same rounds
    .venv/bin/python bench/drain.py --part flat --rounds 3   # cost per job in config and memory size

Part `fast`: a backlog of --events accepted events (default 20,000; the product's own ingest,
in-process), each mapped to one `http` action on bench/fake_destination.py answering at once.
Then N `salon-bridge worker` processes (N in --workers, default 1,2) drain it, against N bare
`rq worker` processes draining as many no-op jobs from the same Redis, interleaved (bridge N=1,
bare N=1, bridge N=2, ...) for --rounds rounds (median reported). Rate = jobs / (the moment the
workers' own counts reach them all - the first job taken off the queue), polled every 5 ms: both
sides keep no finished job (result_ttl 0, as the bridge's). Every action must end `done` and the
destination must have seen each call. --variants adds `fork` (the bridge on RQ's forking Worker,
bench/prototypes/fork_worker.py) to the same interleaved rounds.

Part `slow`: the destination takes 100 ms per call (--delay-ms); `salon-bridge up --workers 8`
drains --slow-events events. With --throttle-every N the destination also answers every Nth call
429 with Retry-After: 30, to show a throttled call does not hold a worker (its action is
rescheduled, the worker moves on).

Part `flat` (bench/drain_flat.py, not in `all`): one worker drains the same backlog with configs
of 1, 20 and 200 mappings (one matches each event) and after 50,000 bookings remembered;
jobs/s against the 1-mapping/empty run of the same round, whose repeat gives the noise.

Memory: resident MB of every worker process (and of RQ's scheduler process, forked by the one
worker that holds the scheduler lock) once the backlog is drained, before the workers stop.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from bench.baseline_app import NOOP_QUEUE  # noqa: E402
from bench.common import (  # noqa: E402
    BENCH_DIR,
    DEFAULT_REDIS_URL,
    PYTHON,
    VENV_BIN,
    BenchError,
    BenchRedis,
    Check,
    Child,
    children_of,
    cmdline,
    descendants,
    free_port,
    machine_table,
    make_events,
    median,
    print_header,
    rss_mb,
    sign,
    table,
    wait_for_port,
    write_config,
)
from bridge import compact  # noqa: E402
from bridge.queue import RESULT_TTL  # noqa: E402

RATIO_TARGET = 0.9  # issue 22 (issue 9 asked 0.8)
SLOW_TARGET = 60.0
RSS_TARGET_MB = 80.0
BRIDGE_QUEUE = "salon-bridge"


@dataclass
class Drain:
    """One drained backlog."""

    kind: str
    workers: int
    jobs: int
    seconds: float
    wall_seconds: float
    statuses: dict[str, int] = field(default_factory=dict)
    destination_calls: int = 0
    rss: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Backlogs


def bridge_backlog(config_path: Path, redis: Redis, bodies: list[bytes]) -> list[str]:
    """Accept the events through the product's own ingest (in-process); their job ids."""
    from bridge.ingest import Ingestor
    from bridge.queue import work_queue
    from bridge.store import event_key
    from mappings.config import load_config

    ingestor = Ingestor(load_config(config_path), redis, work_queue(redis))
    keys = []
    for body in bodies:
        outcome = ingestor.handle(body, sign(body))
        if outcome.status != 202:
            raise BenchError(f"the bridge did not accept a backlog event: {outcome.status} {outcome.body}")
        keys.append(event_key(json.loads(body)["id"]))
    return keys


def noop_backlog(redis: Redis, count: int) -> list[str]:
    """As many no-op jobs (same serializer, same result TTL as the bridge's jobs), pipelined."""
    queue = Queue(NOOP_QUEUE, connection=redis, serializer=JSONSerializer)
    ids = []
    for start in range(0, count, 500):
        with redis.pipeline() as pipe:
            for n in range(start, min(count, start + 500)):
                job = queue.enqueue_call(
                    "bench.baseline_app.noop", args=[f"e-noop-{n}"], result_ttl=RESULT_TTL, pipeline=pipe
                )
                ids.append(job.id)
            pipe.execute()
    return ids


# ---------------------------------------------------------------------------------------------
# Waiting and measuring


def jobs_done(redis: Redis, queue_name: str) -> int:
    """Jobs the queue's workers have finished or failed, by their own counts (rq:worker:<name>).
    The bridge's jobs leave nothing behind when done (result_ttl 0), so no registry counts them."""
    pipe = redis.pipeline(transaction=False)
    for worker_key in redis.smembers(f"rq:workers:{queue_name}"):  # the set holds their keys
        pipe.hmget(worker_key, "successful_job_count", "failed_job_count")
    return sum(int(ok or 0) + int(failed or 0) for ok, failed in pipe.execute())


def watch_drain(redis: Redis, queue_name: str, jobs: int, children: list[Child], timeout: float) -> float:
    """Seconds from the first job taken off the queue until `jobs` jobs are done, polled every
    5 ms (the workers' start-up before their first job is left out)."""
    queue_key = f"rq:queue:{queue_name}"
    waiting = redis.llen(queue_key)
    started = time.monotonic()
    first: float | None = None
    while time.monotonic() < started + timeout:
        now = time.monotonic()
        if first is None and redis.llen(queue_key) < waiting:
            first = now
        if jobs_done(redis, queue_name) >= jobs:
            return now - (first if first is not None else now)
        if int(now * 4) != int((now - 0.005) * 4):  # 4 times a second is enough to notice a crash
            for child in children:
                child.check_alive()
        time.sleep(0.005)
    raise BenchError(f"{queue_name}: not drained after {timeout:g} s ({redis.llen(queue_key)} still queued)")


def action_statuses(redis: Redis, keys: list[str]) -> dict[str, int]:
    """How many actions of the backlog ended in each status (the bridge's event log)."""
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(f"sb:event:{key}")
    counts: Counter[str] = Counter()
    for raw in pipe.execute():
        states = [json.loads(compact.unpack(v))["status"] for k, v in raw.items() if k.startswith(b"a:")]
        counts.update(states or ["(no action)"])
    return dict(counts)


def destination_calls(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        stats: dict[str, int] = json.load(answer)
    return stats


def worker_rss(children: list[Child]) -> dict[str, float]:
    """Resident MB of each worker process, and of any process it forked (RQ's scheduler)."""
    out = {}
    for n, child in enumerate(children, 1):
        out[f"worker {n}"] = rss_mb(child.pid)
        for pid in descendants(child.pid):  # after the drain no job runs: RQ's scheduler only
            out[f"worker {n} scheduler"] = rss_mb(pid)
    return out


# ---------------------------------------------------------------------------------------------
# Part fast


def worker_command(kind: str, worker_class: str, config: Path, redis_url: str) -> tuple[list[str], dict[str, str]]:
    """The command (and environment) of one worker process of a variant."""
    if kind == "bare":
        cls = "rq.worker.Worker" if worker_class == "fork" else "rq.worker.SimpleWorker"
        return [
            str(VENV_BIN / "rq"),
            "worker",
            "--url",
            redis_url,
            "-w",
            cls,
            "--serializer",
            "rq.serializers.JSONSerializer",
            NOOP_QUEUE,
        ], {}
    if kind == "fork" or worker_class == "fork":  # the bridge on RQ's forking Worker
        return [PYTHON, str(BENCH_DIR / "prototypes" / "fork_worker.py"), "worker", "--config", str(config)], {}
    return [str(VENV_BIN / "salon-bridge"), "worker", "--config", str(config)], {}


def drain_once(
    kind: str,
    workers: int,
    args: argparse.Namespace,
    bench_redis: BenchRedis,
    config: Path,
    port: int,
    workdir: Path,
    events: int | None = None,
    seed: Callable[[Redis], None] | None = None,
    label: str | None = None,
) -> Drain:
    """One backlog of `events` (default --events) drained by `workers` fresh worker processes;
    `seed` fills the emptied database first (part flat: entity memory)."""
    bench_redis.reset()
    redis = bench_redis.redis
    if seed is not None:
        seed(redis)
    events = args.events if events is None else events
    before = destination_calls(port)["requests"]
    on_bridge = kind != "bare"
    if on_bridge:
        ids = bridge_backlog(config, redis, make_events(events, prefix=f"drain{workers}"))
    else:
        ids = noop_backlog(redis, events)
    queue_name = BRIDGE_QUEUE if on_bridge else NOOP_QUEUE
    command, env = worker_command(kind, args.worker_class, config, args.redis_url)
    label = label or kind.replace("=", "-").replace("+", "-")
    started = time.monotonic()
    children = [
        Child(f"{label}-{args.worker_class}-w{workers}-{n}", command, workdir, env=env) for n in range(1, workers + 1)
    ]
    spy = _py_spy(args, children[0], f"drain-{label}-{args.worker_class}-w{workers}", workdir) if args.py_spy else None
    try:
        span = watch_drain(redis, queue_name, len(ids), children, timeout=max(120.0, events / 20))
        wall = time.monotonic() - started
        rss = worker_rss(children)
    finally:
        for child in children:
            child.stop()
        if spy is not None:
            spy.process.wait(60)
            spy.stop()
    drain = Drain(kind, workers, len(ids), span, wall, rss=rss)
    queue = Queue(queue_name, connection=redis, serializer=JSONSerializer)
    failed = queue.failed_job_registry.count
    if on_bridge:
        drain.statuses = action_statuses(redis, ids)
        drain.destination_calls = destination_calls(port)["requests"] - before
    else:
        drain.statuses = {"finished": len(ids) - failed}  # watch_drain saw them all done
    if failed:
        drain.statuses["failed jobs"] = failed
    return drain


def _py_spy(args: argparse.Namespace, child: Child, name: str, workdir: Path) -> Child:
    """py-spy on one worker (and what it forks) until it exits; collapsed stacks in --py-spy DIR."""
    out = Path(args.py_spy)
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(VENV_BIN / "py-spy"),
        "record",
        "--pid",
        str(child.pid),
        "--subprocesses",
        "--rate",
        "200",
        "--format",
        "raw",
        "-o",
        str(out / f"{name}.txt"),
    ]
    return Child(f"py-spy-{name}", command, workdir)


def part_fast(args: argparse.Namespace, bench_redis: BenchRedis, workdir: Path) -> dict[str, Any]:
    port = free_port()
    destination = Child(
        "destination-fast", [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(port)], workdir
    )
    try:
        wait_for_port(port, destination)
        config = write_config(workdir / "config.yaml", args.redis_url, f"http://127.0.0.1:{port}/hooks")
        runs: dict[tuple[str, int], list[Drain]] = {}
        for round_number in range(1, args.rounds + 1):
            for workers in args.workers:
                for kind in [*args.variants, "bare"]:
                    drain = drain_once(kind, workers, args, bench_redis, config, port, workdir)
                    runs.setdefault((kind, workers), []).append(drain)
                    print(
                        f"round {round_number} {kind:<10} {workers} worker(s): {drain.rate:8,.0f} jobs/s "
                        f"({drain.jobs:,} in {drain.seconds:.1f} s; {drain.wall_seconds:.1f} s with start-up)  "
                        f"{drain.statuses}"
                        + (f"  destination calls {drain.destination_calls:,}" if kind != "bare" else ""),
                        flush=True,
                    )
    finally:
        destination.stop()
    return fast_report(args, runs)


def fast_report(args: argparse.Namespace, runs: dict[tuple[str, int], list[Drain]]) -> dict[str, Any]:
    rows, checks, summary = [], [], {}
    for workers in args.workers:
        bare = runs[("bare", workers)]
        bare_rate = median(d.rate for d in bare)
        bare_mb = max((v for k, v in bare[-1].rss.items() if k.count(" ") == 1), default=0.0)
        for kind in args.variants:
            drains = runs[(kind, workers)]
            ratio = median(b.rate / r.rate for b, r in zip(drains, bare, strict=True))
            bad = sum(n for d in drains for s, n in d.statuses.items() if s != "done")
            bad += sum(abs(d.jobs - d.destination_calls) for d in drains)
            last = drains[-1].rss
            worker_mb = max((v for k, v in last.items() if k.count(" ") == 1), default=0.0)
            scheduler_mb = max((v for k, v in last.items() if "scheduler" in k), default=0.0)
            rate = median(d.rate for d in drains)
            summary[f"{kind} x{workers}"] = {
                "variant": kind,
                "workers": workers,
                "rate": rate,
                "bare_rate": bare_rate,
                "ratio": ratio,
                "not_done": bad,
                "worker_rss_mb": worker_mb,
                "scheduler_rss_mb": scheduler_mb,
                "bare_rss_mb": bare_mb,
            }
            rows.append(
                [
                    kind,
                    workers,
                    rate,
                    rate / workers,
                    bare_rate,
                    f"{ratio:.2f}x",
                    bad,
                    f"{worker_mb:.0f}",
                    f"{scheduler_mb:.0f}",
                    f"{bare_mb:.0f}",
                ]
            )
            checks.append(
                Check(
                    f"drain {kind}, {workers} worker(s) / bare RQ",
                    f"{ratio:.2f}x",
                    f">= {RATIO_TARGET}x",
                    ratio >= RATIO_TARGET,
                )
            )
            checks.append(Check(f"drain {kind}, {workers} worker(s): actions not done", str(bad), "0", bad == 0))
            checks.append(
                Check(
                    f"worker RSS after drain ({kind}, {workers} worker(s))",
                    f"{worker_mb:.0f} MB",
                    f"<= {RSS_TARGET_MB:g} MB",
                    worker_mb <= RSS_TARGET_MB,
                )
            )
    print_header(
        f"Drain: {args.events:,} events, one http action each, zero-latency destination, "
        f"{args.worker_class} workers, median of {args.rounds}"
    )
    headers = [
        "variant",
        "workers",
        "actions/s",
        "per worker",
        "bare RQ no-op jobs/s",
        "ratio (same round)",
        "not done",
        "worker RSS MB",
        "scheduler RSS MB",
        "bare worker RSS MB",
    ]
    print(table(headers, rows))
    return {"fast": summary, "checks": checks}


# ---------------------------------------------------------------------------------------------
# Part slow: `up --workers 8` against a 100 ms destination


def part_slow(args: argparse.Namespace, bench_redis: BenchRedis, workdir: Path) -> dict[str, Any]:
    port = free_port()
    command = [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(port), "--delay-ms", str(args.delay_ms)]
    if args.throttle_every:
        command += ["--throttle-every", str(args.throttle_every), "--retry-after", "30"]
    destination = Child("destination-slow", command, workdir)
    results: list[Drain] = []
    try:
        wait_for_port(port, destination)
        config = write_config(workdir / "config-slow.yaml", args.redis_url, f"http://127.0.0.1:{port}/hooks")
        for round_number in range(1, args.slow_rounds + 1):
            drain = up_once(args, bench_redis, config, port, workdir)
            results.append(drain)
            print(
                f"round {round_number} up --workers {args.up_workers}: {drain.rate:6,.1f} actions/s "
                f"({drain.jobs:,} in {drain.seconds:.1f} s)  {drain.statuses}  "
                f"destination calls {drain.destination_calls:,}",
                flush=True,
            )
    finally:
        destination.stop()
    rate = median(d.rate for d in results)
    ideal = args.up_workers * 1000 / args.delay_ms
    last = results[-1]
    expected_done = last.jobs - (last.jobs // args.throttle_every if args.throttle_every else 0)
    done_ok = all(d.statuses.get("done", 0) >= expected_done for d in results)
    worker_mb = max((v for k, v in last.rss.items() if k.startswith("worker ") and k.count(" ") == 1), default=0.0)
    print_header(
        f"Drain with a {args.delay_ms:g} ms destination: `salon-bridge up --workers {args.up_workers}`, "
        f"{args.slow_events:,} events, median of {args.slow_rounds}"
        + (f", every {args.throttle_every}th call answered 429 Retry-After: 30" if args.throttle_every else "")
    )
    rows = [[f"up --workers {args.up_workers}", rate, ideal, f"{rate / ideal:.0%}", json.dumps(last.statuses)]]
    print(table(["", "actions/s", "ceiling (workers / delay)", "of ceiling", "action statuses"], rows))
    print()
    print(table(["process (after the drain)", "RSS MB"], [[k, f"{v:.0f}"] for k, v in last.rss.items()]))
    checks = [
        Check(
            f"up --workers {args.up_workers}, {args.delay_ms:g} ms destination",
            f"{rate:.1f} actions/s",
            f">= {SLOW_TARGET:g}/s",
            rate >= SLOW_TARGET,
        ),
        Check("slow drain: actions done", str(last.statuses.get("done", 0)), f">= {expected_done}", done_ok),
        Check(
            "worker RSS after slow drain", f"{worker_mb:.0f} MB", f"<= {RSS_TARGET_MB:g} MB", worker_mb <= RSS_TARGET_MB
        ),
    ]
    return {"slow": {"rate": rate, "ceiling": ideal, "rss": last.rss, "statuses": last.statuses}, "checks": checks}


def up_once(args: argparse.Namespace, bench_redis: BenchRedis, config: Path, port: int, workdir: Path) -> Drain:
    bench_redis.reset()
    redis = bench_redis.redis
    before = destination_calls(port)["requests"]
    ids = bridge_backlog(config, redis, make_events(args.slow_events, prefix="slow"))
    web_port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="up-", dir=workdir))
    command = [
        str(VENV_BIN / "salon-bridge"),
        "up",
        "--config",
        str(config),
        "--workers",
        str(args.up_workers),
        "--port",
        str(web_port),
        "--data-dir",
        str(data_dir),
    ]
    started = time.monotonic()
    up = Child(f"up-{args.up_workers}", command, workdir, env={"REDIS_URL": args.redis_url})
    try:
        span = watch_drain(redis, BRIDGE_QUEUE, len(ids), [up], timeout=max(120.0, args.slow_events / 10))
        wall = time.monotonic() - started
        rss = up_rss(up)
    finally:
        up.stop(grace=15)
    drain = Drain("up", args.up_workers, len(ids), span, wall, rss=rss)
    drain.statuses = action_statuses(redis, ids)
    drain.destination_calls = destination_calls(port)["requests"] - before
    return drain


def up_rss(up: Child) -> dict[str, float]:
    """Resident MB of each process `up` runs, named by its role."""
    out = {"up (supervisor)": rss_mb(up.pid)}
    workers = 0
    for pid in children_of(up.pid):
        words = cmdline(pid).split()
        if "serve" in words:
            out["web (granian master)"] = rss_mb(pid)
            for n, web_worker in enumerate(children_of(pid), 1):
                out[f"web worker {n}"] = rss_mb(web_worker)
        elif "worker" in words:
            workers += 1
            out[f"worker {workers}"] = rss_mb(pid)
            for forked in descendants(pid):
                out[f"worker {workers} scheduler"] = rss_mb(forked)
        else:
            out[f"other (pid {pid})"] = rss_mb(pid)
    return out


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sb-bench-drain-"))
    print(f"logs in {workdir}")
    outcome: dict[str, Any] = {"checks": []}
    with BenchRedis(args.redis_url) as bench_redis:
        if args.part in ("fast", "all"):
            fast = part_fast(args, bench_redis, workdir)
            outcome["fast"] = fast["fast"]
            outcome["checks"] += fast["checks"]
        if args.part == "flat":
            from bench.drain_flat import part_flat

            flat = part_flat(args, bench_redis, workdir)
            outcome["flat"] = flat["flat"]
            outcome["checks"] += flat["checks"]
        if args.part in ("slow", "all"):
            slow = part_slow(args, bench_redis, workdir)
            outcome["slow"] = slow["slow"]
            outcome["checks"] += slow["checks"]
    print()
    print(table(["target", "measured", "wanted", ""], [c.row() for c in outcome["checks"]]))
    return outcome


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["fast", "slow", "all", "flat"], default="all", help="all = fast + slow")
    p.add_argument("--events", type=int, default=20_000, help="backlog of the fast part (default 20,000)")
    p.add_argument(
        "--workers",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1, 2],
        help="worker process counts of the fast part (default 1,2; 4 shows the saturated 2-CPU machine)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the fast part (default 3)")
    p.add_argument(
        "--variants",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        default=["bridge"],
        help="fast part, against bare RQ: bridge (the product), fork (the product on RQ's forking Worker); "
        "default bridge",
    )
    p.add_argument(
        "--worker-class",
        choices=["simple", "fork"],
        default="simple",
        help="RQ worker class on both sides of the fast part (default simple, as the product)",
    )
    p.add_argument("--flat-events", type=int, default=3000, help="backlog of each flat-part drain (default 3,000)")
    p.add_argument(
        "--flat-bookings", type=int, default=50_000, help="flat part: bookings remembered first (default 50,000)"
    )
    p.add_argument("--slow-events", type=int, default=1200, help="backlog of the slow part (default 1200)")
    p.add_argument("--slow-rounds", type=int, default=3, help="rounds of the slow part (default 3)")
    p.add_argument("--delay-ms", type=float, default=100, help="the slow destination's delay (default 100)")
    p.add_argument("--up-workers", type=int, default=8, help="`up --workers` of the slow part (default 8)")
    p.add_argument("--throttle-every", type=int, default=0, help="slow part: answer every Nth call 429")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"an empty database (default {DEFAULT_REDIS_URL})")
    p.add_argument("--py-spy", metavar="DIR", help="fast part: record the first worker of each run with py-spy")
    return p


def main() -> None:
    args = parser().parse_args()
    print(machine_table())
    outcome = run(args)
    sys.exit(0 if all(c.met for c in outcome["checks"]) else 1)


if __name__ == "__main__":
    main()
