"""Counts the Redis round trips and commands of one accepted webhook, for each ingest variant.

    .venv/bin/python bench/round_trips.py [--redis-url redis://127.0.0.1:6379/14]

Each variant's real Flask app answers a few signed sample events through Flask's test client,
on a Redis connection that counts what goes over the wire: a round trip is one write of packed
commands followed by reading their answers (a pipeline or a script counts once).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from flask import Flask  # noqa: E402
from redis import Redis  # noqa: E402
from redis.connection import Connection, ConnectionPool  # noqa: E402
from rq import Queue  # noqa: E402

from bench.baseline_app import NOOP_QUEUE  # noqa: E402
from bench.common import (  # noqa: E402
    BENCH_DIR,
    DEFAULT_REDIS_URL,
    PYTHON,
    BenchRedis,
    Child,
    free_port,
    make_events,
    sign,
    table,
    wait_for_port,
    write_config,
)


class CountingConnection(Connection):
    """A Redis connection that counts packed writes (round trips) and the commands in them, and
    keeps the command names of each round trip in `trace`."""

    round_trips = 0
    commands = 0
    trace: list[list[str]] = []
    _pending: list[str] = []

    @classmethod
    def reset(cls) -> None:
        cls.round_trips = cls.commands = 0
        cls.trace = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        CountingConnection.trace.append(CountingConnection._pending or ["?"])
        CountingConnection._pending = []
        super().send_packed_command(command, check_health)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        CountingConnection.commands += 1
        CountingConnection._pending = [_name(args)]
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        # MULTI and EXEC are framing, not work: count what runs inside.
        names = [_name(c) for c in commands if c[0] not in ("MULTI", "EXEC")]
        CountingConnection.commands += len(names)
        CountingConnection._pending = names
        return super().pack_commands(commands)


def _name(args: Any) -> str:
    name = str(args[0])
    if name in ("EVALSHA", "EVAL"):
        return f"{name}({str(args[3])[:40] if len(args) > 3 else ''})"
    return name


def counting_redis(url: str) -> Redis:
    pool = ConnectionPool.from_url(url, connection_class=CountingConnection)
    return Redis(connection_pool=pool)


def bridge_app(redis: Redis, config: Path) -> Flask:
    from app import create_app
    from mappings.config import load_config

    return create_app(load_config(config), redis=redis)


def measure(name: str, make: Callable[[], Flask], bodies: list[bytes], bench_redis: BenchRedis) -> list[Any]:
    bench_redis.reset()
    client = make().test_client()
    statuses = []
    # The first request pays one-off costs (script load, server version): left out.
    client.post("/webhooks", data=bodies[0], headers={"X-SalonBookIt-Signature": sign(bodies[0])})
    CountingConnection.reset()
    for body in bodies[1:]:
        answer = client.post("/webhooks", data=body, headers={"X-SalonBookIt-Signature": sign(body)})
        statuses.append(answer.status_code)
    n = len(bodies) - 1
    trips, commands = CountingConnection.round_trips / n, CountingConnection.commands / n
    # A duplicate: the same event again.
    CountingConnection.reset()
    client.post("/webhooks", data=bodies[1], headers={"X-SalonBookIt-Signature": sign(bodies[1])})
    duplicate = CountingConnection.round_trips
    return [name, f"{sorted(set(statuses))}", f"{trips:g}", f"{commands:g}", duplicate]


def per_job(kind: str, url: str, config: Path, jobs: int, bench_redis: BenchRedis) -> tuple[float, float, list]:
    """Round trips and commands per job of a SimpleWorker draining `jobs` jobs (less the same
    worker draining one job: its start and stop), and the trace of one job."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from bench.drain import bridge_backlog, noop_backlog
    from bridge import runtime
    from bridge.runtime import Runtime
    from bridge.worker import BridgeWorker
    from mappings.config import load_config

    def drain(count: int) -> tuple[int, int, list]:
        bench_redis.reset()
        if kind != "bare":
            bridge_backlog(config, bench_redis.redis, make_events(count, prefix=f"jobs{count}"))
        else:
            noop_backlog(bench_redis.redis, count)
        redis = counting_redis(url)
        rt = Runtime(load_config(config), redis)
        runtime.install(rt)
        queue = rt.queue if kind != "bare" else Queue(NOOP_QUEUE, connection=redis, serializer=JSONSerializer)
        worker_class = BridgeWorker if kind == "bridge" else SimpleWorker
        CountingConnection.reset()
        try:
            worker_class([queue], connection=redis, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
        finally:
            runtime.install(None)
        return CountingConnection.round_trips, CountingConnection.commands, CountingConnection.trace

    one_trips, one_commands, one_trace = drain(1)
    many_trips, many_commands, _ = drain(jobs + 1)
    return (many_trips - one_trips) / jobs, (many_commands - one_commands) / jobs, one_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--trace", action="store_true", help="print the round trips of one bridge job")
    args = parser.parse_args()
    bodies = make_events(14, prefix="trips")
    rows = []
    with BenchRedis(args.redis_url) as bench_redis, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp) / "config.yaml", args.redis_url, "http://127.0.0.1:9/never")
        from bench.baseline_app import create_app as baseline_app

        rows.append(
            measure("baseline", lambda: baseline_app(redis=counting_redis(args.redis_url)), bodies, bench_redis)
        )
        rows.append(measure("bridge", lambda: bridge_app(counting_redis(args.redis_url), config), bodies, bench_redis))
        from bench.prototypes.watch_ingest import store_and_enqueue_watch
        from bridge.ingest import Ingestor

        original = Ingestor.store_and_enqueue
        Ingestor.store_and_enqueue = store_and_enqueue_watch  # type: ignore[method-assign]
        try:
            rows.append(
                measure("watch3", lambda: bridge_app(counting_redis(args.redis_url), config), bodies, bench_redis)
            )
        finally:
            Ingestor.store_and_enqueue = original  # type: ignore[method-assign]
        print(
            table(
                ["ingest", "statuses", "round trips / event", "commands sent / event", "round trips / duplicate"], rows
            )
        )

        port = free_port()
        destination = Child(
            "trips-destination", [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(port)], Path(tmp)
        )
        try:
            wait_for_port(port, destination)
            config = write_config(Path(tmp) / "config-jobs.yaml", args.redis_url, f"http://127.0.0.1:{port}/hooks")
            job_rows, traces = [], {}
            what = {
                "bare": "bare RQ SimpleWorker, no-op job",
                "bridge": "bridge: BridgeWorker, process_event, one http action",
            }
            for kind, label in what.items():
                trips, commands, trace = per_job(kind, args.redis_url, config, 50, bench_redis)
                job_rows.append([label, f"{trips:.1f}", f"{commands:.1f}"])
                traces[kind] = trace
        finally:
            destination.stop()
    print()
    print(table(["job (SimpleWorker)", "round trips / job", "commands sent / job"], job_rows))
    if args.trace:
        for kind, trace in traces.items():
            print(f"\n{kind}: a worker start, one job, stop ({len(trace)} round trips):")
            for n, names in enumerate(trace, 1):
                print(f"  {n:3d}  {' '.join(names)}")


if __name__ == "__main__":
    main()
