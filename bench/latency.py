"""Event-to-effect latency: from the platform's POST to the destination's receipt, at a steady rate,
against Flask + RQ doing the same POST and against the RQ job alone.

    .venv/bin/python bench/latency.py                          # 100 ev/s, 3 rounds of 15 s, 2 workers
    .venv/bin/python bench/latency.py --rate 20 --seconds 10
    .venv/bin/python bench/latency.py --rates 20,100 --rounds 3

Open loop: event n is due at start + n / rate whatever happened to the ones before it, and its
latency is counted from that moment (a sender held up makes the figure worse, as it should, rather
than slowing the load). The destination (bench/fake_destination.py --arrivals) notes when each
call arrives, by the body's `event` field, on the same wall clock.

  bridge    the signed webhook is POSTed to `salon-bridge serve` (as deployed: 2 web processes x 4
            threads) over keep-alive connections; --workers `salon-bridge worker` processes route
            it to one `http` action on the destination (bench/common.write_config).
  baseline  the same POST to bench/baseline_app.py --forward-to (Flask + RQ: HMAC, SET NX, enqueue,
            under the same granian options); --workers bare `rq worker` processes (SimpleWorker,
            JSON serializer, result_ttl 0 as the bridge's) run `forward`: the same POST, nothing else.
  rq        no web request: the baseline's job (`forward`) is enqueued straight into Redis at the
            due moment, the same bare workers run it. The least RQ itself adds.

The sides alternate (bridge, baseline, rq, bridge, ...) for --rounds rounds; the first --warmup
seconds of each run are sent but left out of the figures. Reported per side: p50/p99/max of the
latency (median over rounds), events lost (due but never arrived) or refused, the p50 of the web
sides' answers (due moment to the 202 read), and the bridge's p99 over the side's, per round.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue as stdlib_queue
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from bench.baseline_app import BASELINE_QUEUE  # noqa: E402
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
    percentile,
    print_header,
    sign,
    table,
    wait_for_port,
    write_config,
)
from bridge.queue import RESULT_TTL  # noqa: E402

P99_TARGET_MS = 25.0
RATIO_TARGET = 1.3
RQ_QUEUE = "bench-latency"
SIDES = ("bridge", "baseline", "rq")
SENDERS = 8  # keep-alive connections to serve: enough that a slow answer does not delay the next event


@dataclass
class Run:
    side: str
    rate: float
    latencies_ms: list[float] = field(default_factory=list)  # sorted, warm-up left out
    by_due: list[float] = field(default_factory=list)  # the same in the order the events were due
    lost: int = 0
    rejected: int = 0  # answers other than 202
    acks_ms: list[float] = field(default_factory=list)  # sorted, due -> answer, web sides only

    def p(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)


# ---------------------------------------------------------------------------------------------
# Sending on schedule


def on_schedule(count: int, rate: float, send: Callable[[int, float], None]) -> float:
    """Call send(n, due) for n in 0..count-1 at due = start + n / rate; returns start (unix time)."""
    start = time.time() + 0.2
    for n in range(count):
        due = start + n / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        send(n, due)
    return start


class WebhookSenders:
    """SENDERS threads, each with a keep-alive connection to serve, taking requests off one queue."""

    def __init__(self, port: int):
        self.port = port
        self.todo: stdlib_queue.Queue[tuple[bytes, float] | None] = stdlib_queue.Queue()
        self.statuses: list[int] = []
        self.acks_ms: list[float] = []  # due moment -> the whole answer read
        self.threads = [threading.Thread(target=self._send_all, daemon=True) for _ in range(SENDERS)]
        for thread in self.threads:
            thread.start()

    def send(self, body: bytes, due: float) -> None:
        self.todo.put((body, due))

    def _send_all(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while (item := self.todo.get()) is not None:
            body, due = item
            headers = {
                "Content-Type": "application/json",
                "X-SalonBookIt-Signature": sign(body),
                "X-SalonBookIt-Event": event_type_of(body),
            }
            try:
                connection.request("POST", "/webhooks", body=body, headers=headers)
                answer = connection.getresponse()
                answer.read()
                self.statuses.append(answer.status)
                self.acks_ms.append((time.time() - due) * 1000)
            except (OSError, http.client.HTTPException):
                self.statuses.append(-1)
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.close()

    def close(self) -> None:
        for _ in self.threads:
            self.todo.put(None)
        for thread in self.threads:
            thread.join(30)


# ---------------------------------------------------------------------------------------------
# One run


def arrivals(port: int) -> dict[str, float]:
    """What the destination noted since the last call (it forgets them as it answers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/arrivals", timeout=30) as answer:
        noted: dict[str, float] = json.load(answer)
    return noted


def collect(run: Run, ids: list[str], start: float, args: argparse.Namespace, port: int, workers: list[Child]) -> None:
    """Wait until every event arrived (or 10 s passed with none new) and fill in the run's figures."""
    seen: dict[str, float] = {}
    quiet_since = time.monotonic()
    while len(seen) < len(ids) and time.monotonic() - quiet_since < 10:
        for child in workers:
            child.check_alive()
        new = arrivals(port)
        if new:
            seen.update(new)
            quiet_since = time.monotonic()
        time.sleep(0.1)
    warm = int(args.warmup * run.rate)
    latencies = []
    for n, event_id in enumerate(ids):
        if event_id not in seen:
            run.lost += 1
        elif n >= warm:
            latencies.append((seen[event_id] - (start + n / run.rate)) * 1000)
    run.by_due = latencies
    run.latencies_ms = sorted(latencies)


def side_run(side: str, rate: float, args: argparse.Namespace, bench_redis: BenchRedis, ctx: dict[str, Any]) -> Run:
    """One side at one rate: fresh workers, the events sent on schedule, their arrivals collected."""
    bench_redis.reset()
    redis = bench_redis.redis
    count = int(rate * (args.warmup + args.seconds))
    bodies = make_events(count, prefix=f"latency{int(rate)}{side}")
    ids = [json.loads(body)["id"] for body in bodies]
    bare_worker = [str(VENV_BIN / "rq"), "worker", "--url", args.redis_url, "-w", "rq.worker.SimpleWorker"]
    bare_worker += ["--serializer", "rq.serializers.JSONSerializer"]
    if side == "bridge":
        command, queue_name = [str(VENV_BIN / "salon-bridge"), "worker", "--config", str(ctx["config"])], "salon-bridge"
    else:
        queue_name = BASELINE_QUEUE if side == "baseline" else RQ_QUEUE
        command = [*bare_worker, queue_name]
    workers = [Child(f"{side}-worker-{n}", command, ctx["workdir"]) for n in range(1, args.workers + 1)]
    run = Run(side, rate)
    try:
        wait_workers(redis, queue_name, args.workers, workers)
        if side == "rq":
            queue = Queue(RQ_QUEUE, connection=redis, serializer=JSONSerializer)
            url = ctx["destination_url"]

            def send(n: int, due: float) -> None:  # the baseline's own job, with no web request before it
                queue.enqueue_call("bench.baseline_app.forward", args=[url, bodies[n].decode()], result_ttl=RESULT_TTL)

            start = on_schedule(count, rate, send)
        else:
            senders = WebhookSenders(ctx["ports"][side])
            start = on_schedule(count, rate, lambda n, due: senders.send(bodies[n], due))
            senders.close()
            run.rejected = sum(1 for status in senders.statuses if status != 202)
            run.acks_ms = sorted(senders.acks_ms[int(args.warmup * rate) :])
        collect(run, ids, start, args, ctx["destination_port"], workers)
    finally:
        for child in workers:
            child.stop()
    return run


def wait_workers(redis: Redis, queue_name: str, count: int, children: list[Child], timeout: float = 60) -> None:
    """Until `count` workers have registered on the queue (and so wait on it)."""
    deadline = time.monotonic() + timeout
    while redis.scard(f"rq:workers:{queue_name}") < count:
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{count} workers did not register on {queue_name} within {timeout:g} s")
        time.sleep(0.05)
    time.sleep(0.5)  # registered comes just before the first wait on the queue


# ---------------------------------------------------------------------------------------------
# The benchmark


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sb-bench-latency-"))
    print(f"logs in {workdir}")
    destination_port = free_port()
    destination_url = f"http://127.0.0.1:{destination_port}/hooks"
    config = write_config(workdir / "config.yaml", args.redis_url, destination_url)
    ports = {"bridge": free_port(), "baseline": free_port()}
    ctx = {
        "workdir": workdir,
        "config": config,
        "destination_port": destination_port,
        "destination_url": destination_url,
        "ports": ports,
    }
    where = {side: ["--host", "127.0.0.1", "--port", str(port)] for side, port in ports.items()}
    children: list[Child] = []
    runs: dict[tuple[str, float], list[Run]] = {}
    with BenchRedis(args.redis_url) as bench_redis:
        try:
            destination = [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(destination_port)]
            children.append(Child("destination", [*destination, "--arrivals"], workdir))
            wait_for_port(destination_port, children[-1])
            serve = [str(VENV_BIN / "salon-bridge"), "serve", "--config", str(config), *where["bridge"]]
            baseline = [PYTHON, str(BENCH_DIR / "baseline_app.py"), *where["baseline"], "--redis-url", args.redis_url]
            children.append(Child("serve", serve, workdir))
            children.append(Child("baseline", [*baseline, "--forward-to", destination_url], workdir))
            for child, port in zip(children[1:], ports.values(), strict=True):
                wait_for_port(port, child)
            for round_number in range(1, args.rounds + 1):
                for rate in args.rates:
                    for side in args.sides:
                        r = side_run(side, rate, args, bench_redis, ctx)
                        runs.setdefault((side, rate), []).append(r)
                        if args.dump:
                            with open(args.dump, "a", encoding="utf-8") as out:
                                out.write(json.dumps({"side": side, "rate": rate, "by_due": r.by_due}) + "\n")
                        print(
                            f"round {round_number} {side:<8} {rate:g} ev/s: p50 {r.p(0.5):6.1f} ms  "
                            f"p99 {r.p(0.99):6.1f} ms  max {r.p(1.0):6.1f} ms  "
                            f"({len(r.latencies_ms):,} measured, lost {r.lost}, refused {r.rejected})"
                            + (f"  ack p50 {percentile(r.acks_ms, 0.5):.1f} ms" if r.acks_ms else ""),
                            flush=True,
                        )
        finally:
            for child in reversed(children):
                child.stop()
    return report(args, runs)


def p99_ratios(runs: dict[tuple[str, float], list[Run]], rate: float, side: str) -> list[float]:
    """Per round, the bridge's p99 over `side`'s."""
    pairs = zip(runs[("bridge", rate)], runs[(side, rate)], strict=True)
    return [b.p(0.99) / o.p(0.99) for b, o in pairs if o.p(0.99) > 0]


def report(args: argparse.Namespace, runs: dict[tuple[str, float], list[Run]]) -> dict[str, Any]:
    print_header(
        f"Event to effect, {args.workers} workers per side, {args.rounds} x {args.seconds:g} s "
        "(median over rounds; ratios per round: the bridge's p99 over the other's)"
    )
    rows, checks, summary = [], [], {}
    for rate in args.rates:
        figures: dict[str, dict[str, float]] = {}
        for side in args.sides:
            side_runs = runs[(side, rate)]
            figures[side] = {
                q: median(r.p(f) for r in side_runs) for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            }
            figures[side]["lost"] = sum(r.lost + r.rejected for r in side_runs)
            acks = [percentile(r.acks_ms, 0.5) for r in side_runs if r.acks_ms]
            figures[side]["ack p50"] = median(acks) if acks else float("nan")
            ratios = p99_ratios(runs, rate, side) if side != "bridge" else []
            figures[side]["bridge p99 ratio"] = median(ratios) if ratios else 1.0
            rows.append(
                [
                    f"{rate:g} ev/s",
                    side,
                    f"{figures[side]['p50']:.1f}",
                    f"{figures[side]['p99']:.1f}",
                    f"{figures[side]['max']:.1f}",
                    int(figures[side]["lost"]),
                    f"{figures[side]['ack p50']:.1f}" if acks else "-",
                    f"{median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})" if ratios else "",
                ]
            )
        summary[f"{rate:g}"] = figures
        bridge = figures["bridge"]
        if rate >= 100:
            checks.append(
                Check(
                    f"event -> effect p99 at {rate:g} ev/s, {args.workers} workers",
                    f"{bridge['p99']:.1f} ms",
                    f"<= {P99_TARGET_MS:g} ms",
                    bridge["p99"] <= P99_TARGET_MS,
                )
            )
        if rate >= 100 and "baseline" in figures:
            ratio = figures["baseline"]["bridge p99 ratio"]
            checks.append(
                Check(
                    f"the same over Flask + RQ's p99 (web, job, the same POST) at {rate:g} ev/s",
                    f"{ratio:.2f}x",
                    f"<= {RATIO_TARGET:g}x",
                    ratio <= RATIO_TARGET,
                )
            )
        checks.append(
            Check(f"events lost or refused at {rate:g} ev/s", str(int(bridge["lost"])), "0", bridge["lost"] == 0)
        )
    headers = ["rate", "side", "p50 ms", "p99 ms", "max ms", "lost", "ack p50 ms", "bridge p99 / this"]
    print(table(headers, rows))
    print()
    print(table(["target", "measured", "wanted", ""], [c.row() for c in checks]))
    return {"latency": summary, "checks": checks}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--rates",
        "--rate",
        type=lambda s: [float(n) for n in s.split(",")],
        default=[100.0],
        help="events per second, comma-separated (default 100)",
    )
    p.add_argument("--seconds", type=float, default=15, help="measured seconds per run (default 15)")
    p.add_argument("--warmup", type=float, default=2, help="seconds sent first and left out (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument(
        "--sides",
        type=lambda s: [v for v in s.split(",") if v],
        default=list(SIDES),
        help=f"which sides, bridge first (default {','.join(SIDES)})",
    )
    p.add_argument("--dump", metavar="FILE", help="every measured latency, as JSON lines per run")
    p.add_argument("--workers", type=int, default=2, help="worker processes on each side (default 2)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"an empty database (default {DEFAULT_REDIS_URL})")
    return p


def main() -> None:
    args = parser().parse_args()
    if not args.sides or args.sides[0] != "bridge" or not set(args.sides) <= set(SIDES):
        raise SystemExit(f"--sides: bridge first, then any of {', '.join(SIDES[1:])}")
    print(machine_table())
    outcome = run(args)
    sys.exit(0 if all(c.met for c in outcome["checks"]) else 1)


if __name__ == "__main__":
    main()
