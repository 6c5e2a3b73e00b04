"""Scale-out benchmark: several `serve` and `worker` processes on one Redis, exactly once, and
what that Redis costs per event.

    .venv/bin/python bench/scaleout.py --redis-url redis://127.0.0.1:6396/3     # 20,000 events
    .venv/bin/python bench/scaleout.py --events 4000 --rounds 1 --redis-url redis://127.0.0.1:6396/3

Layouts (--layouts, default 2x4,1x2): SERVESxWORKERS, e.g. 2x4 = two `salon-bridge serve`
processes (different ports, the same config; --web-workers granian processes each) and four
`salon-bridge worker` processes, all on the one Redis of --redis-url. Give it a Redis of its own:
Redis's INFO counters are per server, and every command on it is counted.

Each run: N distinct signed events (the 13 types in turn, 1-2 KB) are delivered, split across the
serve processes, over --connections keep-alive connections in all (the same in every layout), all
at once. --dup-both of them are delivered to both serve processes, and --dup-same of them twice to
the same one (a platform retry). Every event is delivered at least once, so exactly N must be
accepted (202) and the rest answered as duplicates (200). Every event maps to one `http` action on
bench/fake_destination.py --record, which counts calls per Idempotency-Key: each event must be
called exactly once (none lost, none doubled) and every action must end `done`.

Phases, so that Redis's cost splits cleanly: ingest (the serve processes up, no worker yet), then
the drain (the workers started on the backlog). At each phase boundary the bench reads Redis's
INFO commandstats (commands, those that scripts run included) and INFO cpu (used_cpu_sys +
used_cpu_user of the Redis process), and divides the deltas by N. The drain's share includes the
workers' start-up and idle polling until the last job ends, as in production. From the CPU per
event, the events/s at which one Redis core is busy all the time: the ceiling of a single Redis,
however many web and worker machines feed it.
--live adds a run of the first layout with the workers draining while events arrive (the
exactly-once check under full concurrency; its Redis figures are the two phases together).

Layouts run interleaved for --rounds rounds; medians are reported. On a 2-core machine a second
set of processes cannot add CPU: compare layouts for correctness and for Redis's cost per event,
which must not grow with the number of processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from redis import Redis  # noqa: E402

from bench import drain  # noqa: E402
from bench.common import (  # noqa: E402
    BENCH_DIR,
    DEFAULT_REDIS_URL,
    PYTHON,
    VENV_BIN,
    BenchError,
    BenchRedis,
    Check,
    Child,
    event_type_of,
    free_port,
    machine_table,
    make_events,
    median,
    print_header,
    sign,
    table,
    wait_for_port,
    write_config,
)
from bridge.store import event_key  # noqa: E402

QUEUE = "salon-bridge"
ACTION_ID = "all-to-crm/notify"  # the one action of bench.common.write_config's mapping
# Commands of Redis's own bookkeeping and of this bench's reading, not the product's.
NOT_THE_PRODUCTS = {"info", "ping", "client|setname", "client|setinfo", "hello", "select", "config|get"}


@dataclass(frozen=True)
class Layout:
    serves: int
    workers: int

    @property
    def name(self) -> str:
        return f"{self.serves} serve x {self.workers} workers"


@dataclass
class RedisUse:
    """Redis's work between two readings: commands by name, their time, and CPU seconds."""

    commands: Counter[str] = field(default_factory=Counter)
    usec: Counter[str] = field(default_factory=Counter)  # a script's own includes its commands'
    cpu: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.commands.values())


@dataclass
class Run:
    layout: Layout
    live: bool
    events: int
    deliveries: int
    statuses: Counter[int]
    send_seconds: float
    drain_seconds: float  # from the first job's start (phases) or the first delivery (live) to the last job
    ingest: RedisUse
    drain: RedisUse
    calls: dict[str, int]
    actions: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def accepted_rate(self) -> float:
        return self.statuses.get(202, 0) / self.send_seconds

    @property
    def drained_rate(self) -> float:
        return self.events / self.drain_seconds if self.drain_seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Redis's own counters


def redis_reading(redis: Redis) -> RedisUse:
    """Commands processed so far by name, with their microseconds (INFO commandstats), and the Redis
    process's CPU seconds (INFO cpu)."""
    reading = RedisUse()
    for name, value in redis.info("commandstats").items():
        command = name.removeprefix("cmdstat_")
        if command not in NOT_THE_PRODUCTS:
            reading.commands[command] = int(value["calls"])
            reading.usec[command] = int(value["usec"])
    cpu = redis.info("cpu")
    reading.cpu = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    return reading


def redis_use(before: RedisUse, after: RedisUse) -> RedisUse:
    return RedisUse(after.commands - before.commands, after.usec - before.usec, after.cpu - before.cpu)


# ---------------------------------------------------------------------------------------------
# Deliveries


def plan_deliveries(
    bodies: list[bytes], servers: int, dup_both: float, dup_same: float, seed: int = 7
) -> list[list[bytes]]:
    """Each server's list of deliveries: every event once, to a server in turn; a share of them
    also to another server (when there are two or more) and a share again to the same one."""
    rng = random.Random(seed)
    lists: list[list[bytes]] = [[] for _ in range(servers)]
    for n, body in enumerate(bodies):
        home = n % servers
        lists[home].append(body)
        draw = rng.random()
        if draw < dup_both and servers > 1:
            lists[(home + 1) % servers].append(body)
        elif draw < dup_both + dup_same:
            lists[home].append(body)
    for deliveries in lists:
        rng.shuffle(deliveries)  # a duplicate arrives at any time, often while its first copy is handled
    return lists


def request_bytes(port: int, body: bytes) -> bytes:
    head = (
        f"POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-SalonBookIt-Signature: {sign(body)}\r\nX-SalonBookIt-Event: {event_type_of(body)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _deliver_all(targets: list[tuple[int, list[bytes]]], connections: int) -> Counter[int]:
    """Every delivery once, over `connections` connections shared out among the servers (a socket
    error or timeout: sent again, as the platform would)."""
    statuses: Counter[int] = Counter()

    async def connection(port: int, mine: list[bytes]) -> None:
        reader = writer = None
        for request in mine:
            while True:
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    assert reader is not None
                    writer.write(request)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    lines = head.decode("latin-1").split("\r\n")
                    length = next(
                        (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"),
                        0,
                    )
                    await reader.readexactly(length)
                    statuses[int(lines[0].split()[1])] += 1
                    break
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    statuses[-1] += 1  # a resend
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    jobs = []
    for port, deliveries in targets:
        requests = [request_bytes(port, body) for body in deliveries]
        per_server = max(1, connections // len(targets))
        jobs += [connection(port, requests[n::per_server]) for n in range(per_server)]
    await asyncio.gather(*jobs)
    return statuses


# ---------------------------------------------------------------------------------------------
# One run


def wait_ready(port: int, child: Child, timeout: float = 30.0) -> None:
    """Until the server answers /healthz (/readyz also wants a worker: in the phased runs none is up yet)."""
    wait_for_port(port, child, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"serve on {port} not ready after {timeout:g} s")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def run_once(
    layout: Layout,
    live: bool,
    args: argparse.Namespace,
    bench_redis: BenchRedis,
    config: Path,
    dest: int,
    workdir: Path,
) -> Run:
    bench_redis.reset()
    redis = bench_redis.redis
    tag = f"{layout.serves}x{layout.workers}{'-live' if live else ''}"
    bodies = make_events(args.events, prefix=f"scale{tag.replace('-', '')}")
    ids = [json.loads(b)["id"] for b in bodies]
    plans = plan_deliveries(bodies, layout.serves, args.dup_both, args.dup_same)
    calls_before = get_json(f"http://127.0.0.1:{dest}/calls")
    serves: list[Child] = []
    workers: list[Child] = []

    def start_workers() -> None:
        command = [str(VENV_BIN / "salon-bridge"), "worker", "--config", str(config)]
        workers.extend(Child(f"worker-{tag}-{n}", command, workdir) for n in range(1, layout.workers + 1))

    try:
        ports = []
        for n in range(1, layout.serves + 1):
            port = free_port()
            where = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.web_workers)]
            command = [str(VENV_BIN / "salon-bridge"), "serve", "--config", str(config), *where]
            serves.append(Child(f"serve-{tag}-{n}", command, workdir))
            ports.append(port)
        for port, child in zip(ports, serves, strict=True):
            wait_ready(port, child)
        if live:
            start_workers()
            time.sleep(2.0)  # the workers are up and waiting before the first delivery
        start = redis_reading(redis)
        started = time.monotonic()
        statuses = asyncio.run(_deliver_all(list(zip(ports, plans, strict=True)), args.connections))
        send_seconds = time.monotonic() - started
        after_ingest = redis_reading(redis)
        if not live:
            start_workers()
        span = drain.watch_drain(redis, QUEUE, args.events, [*serves, *workers], timeout=max(120.0, args.events / 20))
        end = redis_reading(redis)
        drain_seconds = (time.monotonic() - started) if live else span
    finally:
        for child in [*workers, *serves]:
            child.stop()
    calls = get_json(f"http://127.0.0.1:{dest}/calls")
    mine = {k: n - calls_before.get(k, 0) for k, n in calls.items() if n > calls_before.get(k, 0)}
    run = Run(
        layout,
        live,
        args.events,
        sum(len(p) for p in plans),
        statuses,
        send_seconds,
        drain_seconds,
        redis_use(start, end) if live else redis_use(start, after_ingest),
        RedisUse() if live else redis_use(after_ingest, end),
        mine,
        action_statuses(redis, ids),
    )
    run.problems = exactly_once_problems(run, ids)
    return run


def action_statuses(redis: Redis, event_ids: list[str]) -> dict[str, int]:
    return drain.action_statuses(redis, [event_key(i) for i in event_ids])


def exactly_once_problems(run: Run, event_ids: list[str]) -> list[str]:
    """What the destination and the event log say against exactly once."""
    problems = []
    expected = {f"{i}/{ACTION_ID}" for i in event_ids}
    lost = expected - run.calls.keys()
    doubled = {k: n for k, n in run.calls.items() if k in expected and n > 1}
    strange = run.calls.keys() - expected
    if lost:
        problems.append(f"{len(lost)} events never called, e.g. {sorted(lost)[0]}")
    if doubled:
        problems.append(f"{len(doubled)} events called more than once, e.g. {next(iter(doubled.items()))}")
    if strange:
        problems.append(f"{len(strange)} calls for no event of this run, e.g. {sorted(strange)[0]}")
    if run.statuses.get(202, 0) != run.events:
        problems.append(f"{run.statuses.get(202, 0)} deliveries accepted (202), expected {run.events}")
    duplicates = run.deliveries - run.events
    if run.statuses.get(200, 0) != duplicates:
        problems.append(f"{run.statuses.get(200, 0)} answered as duplicates (200), expected {duplicates}")
    other = {s: n for s, n in run.statuses.items() if s not in (200, 202, -1)}
    if other:
        problems.append(f"other answers: {other}")
    if run.actions != {"done": run.events}:
        problems.append(f"action statuses {run.actions}, expected {{'done': {run.events}}}")
    return problems


# ---------------------------------------------------------------------------------------------
# Report


def report(args: argparse.Namespace, runs: list[Run]) -> dict[str, Any]:
    checks = [
        Check(
            f"exactly once, {r.layout.name}{' (live)' if r.live else ''}",
            "; ".join(r.problems) or f"{r.events:,} events, {r.deliveries - r.events:,} duplicates, each called once",
            "no event lost or doubled",
            not r.problems,
        )
        for r in runs
    ]
    rows = []
    summary: dict[str, Any] = {}
    layouts = list(dict.fromkeys((r.layout, r.live) for r in runs))
    for layout, live in layouts:
        mine = [r for r in runs if r.layout == layout and r.live == live]
        n = mine[0].events
        ingest_cmds = median(r.ingest.total / n for r in mine)
        drain_cmds = median(r.drain.total / n for r in mine)
        ingest_cpu = median(r.ingest.cpu / n * 1e6 for r in mine)  # microseconds
        drain_cpu = median(r.drain.cpu / n * 1e6 for r in mine)
        total_cpu = ingest_cpu + drain_cpu
        ceiling = 1e6 / total_cpu if total_cpu > 0 else float("nan")
        name = layout.name + (" (live)" if live else "")
        summary[name] = {
            "accepted_per_s": median(r.accepted_rate for r in mine),
            "drained_per_s": median(r.drained_rate for r in mine),
            "commands_per_event": {"ingest": ingest_cmds, "drain": drain_cmds},
            "redis_cpu_us_per_event": {"ingest": ingest_cpu, "drain": drain_cpu},
            "one_redis_core_events_per_s": ceiling,
        }
        rows.append(
            [
                name,
                median(r.accepted_rate for r in mine),
                median(r.drained_rate for r in mine),
                "-" if live else f"{ingest_cmds:.1f}",
                "-" if live else f"{drain_cmds:.1f}",
                f"{ingest_cmds + drain_cmds:.1f}",
                "-" if live else f"{ingest_cpu:.0f}",
                "-" if live else f"{drain_cpu:.0f}",
                f"{total_cpu:.0f}",
                ceiling,
                len(mine),
            ]
        )
    print_header(
        f"Scale-out: {args.events:,} events (+{args.dup_both:.0%} to both serves, +{args.dup_same:.0%} twice to one), "
        f"{args.web_workers} web process(es) per serve, {args.connections} connections in all, one Redis"
    )
    headers = [
        "layout",
        "accepted/s",
        "drained/s",
        "Redis cmds/event ingest",
        "drain",
        "total",
        "Redis CPU us/event ingest",
        "drain",
        "total",
        "events/s at one Redis core",
        "runs",
    ]
    print(table(headers, rows))
    first = next(r for r in runs if not r.live)
    n = first.events
    print_header(f"Redis commands and their time per event, {first.layout.name} (round 1)")
    use = {"ingest": first.ingest, "drain": first.drain}
    names = sorted(
        set(first.ingest.commands) | set(first.drain.commands), key=lambda c: -sum(u.usec[c] for u in use.values())
    )
    rows = [
        [c, *(f"{u.commands[c] / n:.2f}" for u in use.values()), *(f"{u.usec[c] / n:.1f}" for u in use.values())]
        for c in names[:25]
    ]
    print(table(["command", "calls ingest", "calls drain", "us ingest", "us drain"], rows))
    print("(commandstats counts a script's commands and the script itself: `eval`/`evalsha` time includes theirs)")
    return {"scaleout": summary, "checks": checks}


def describe(r: Run) -> str:
    n = r.events
    return (
        f"{r.layout.name}{' live' if r.live else ''}: accepted {r.accepted_rate:,.0f}/s "
        f"({r.statuses.get(202, 0):,} + {r.statuses.get(200, 0):,} duplicates in {r.send_seconds:.1f} s), "
        f"drained {r.drained_rate:,.0f}/s, Redis {r.ingest.total / n:.1f}+{r.drain.total / n:.1f} cmds/event, "
        f"{(r.ingest.cpu + r.drain.cpu) / n * 1e6:.0f} us CPU/event  {'; '.join(r.problems) or 'exactly once'}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sb-bench-scaleout-"))
    print(f"logs in {workdir}", flush=True)
    dest = free_port()
    destination = Child(
        "destination", [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(dest), "--record"], workdir
    )
    runs: list[Run] = []
    try:
        wait_for_port(dest, destination)
        config = write_config(workdir / "config.yaml", args.redis_url, f"http://127.0.0.1:{dest}/hooks")
        with BenchRedis(args.redis_url) as bench_redis:
            order = [(layout, False) for layout in args.layouts]
            for round_number in range(1, args.rounds + 1):
                for layout, live in order + ([(args.layouts[0], True)] if args.live and round_number == 1 else []):
                    r = run_once(layout, live, args, bench_redis, config, dest, workdir)
                    runs.append(r)
                    print(f"round {round_number} {describe(r)}", flush=True)
    finally:
        destination.stop()
    outcome = report(args, runs)
    print()
    print(table(["target", "measured", "wanted", ""], [c.row() for c in outcome["checks"]]))
    return outcome


def parse_layouts(text: str) -> list[Layout]:
    layouts = []
    for part in text.split(","):
        serves, _, workers = part.strip().partition("x")
        layouts.append(Layout(int(serves), int(workers)))
    return layouts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000, help="distinct events per run (default 20,000)")
    p.add_argument("--layouts", type=parse_layouts, default=parse_layouts("2x4,1x2"), help="SERVESxWORKERS,...")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the layouts (default 2)")
    p.add_argument("--live", action="store_true", help="also one run of the first layout with workers draining live")
    p.add_argument("--dup-both", type=float, default=0.05, help="share of events sent to two serves (default 0.05)")
    p.add_argument("--dup-same", type=float, default=0.05, help="share sent twice to the same serve (default 0.05)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections in all (default 16)")
    p.add_argument("--web-workers", type=int, default=2, help="`serve --workers` of each serve (default 2)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="an empty database of a Redis of its own")
    return p


def main() -> None:
    args = parser().parse_args()
    print(machine_table())
    outcome = run(args)
    sys.exit(0 if all(c.met for c in outcome["checks"]) else 1)


if __name__ == "__main__":
    main()
