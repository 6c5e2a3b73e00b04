"""Storage benchmark: Redis bytes per accepted event and per remembered entity, and a sizing table.

    .venv/bin/python bench/storage.py --redis-url redis://127.0.0.1:6393/3            # 50,000 events
    .venv/bin/python bench/storage.py --redis-url redis://127.0.0.1:6393/3 --events 5000

Realistic stories (booking lifecycles with moves, payments, cancellations and completions, orders,
customers; bench/chaos_events.py) across 20 salons, appointment dates shifted to lie ahead of today,
are accepted through the product's own ingest (in-process `Ingestor`) and processed by real
`salon-bridge worker` processes, with a few realistic mappings to an http fake destination.
Every key is measured with MEMORY USAGE (SAMPLES 0) by family, right after ingest and after
processing; `used_memory` is read at each point too. The sizing table multiplies the measured
sizes by how long each family lives: the TTL Redis holds for it (event log, seen marks, RQ's
keys), the retention settings for entity memory, under the assumptions it prints.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_events import build_stream  # noqa: E402
from bench.common import (  # noqa: E402
    BENCH_DIR,
    PYTHON,
    SECRET,
    VENV_BIN,
    BenchError,
    BenchRedis,
    Child,
    free_port,
    print_header,
    sign,
    table,
    wait_for_port,
)

SALONS = 20
QUEUE = "salon-bridge"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Families, in the order printed: (name, test on the key).
FAMILIES: list[tuple[str, Any]] = [
    ("event record sb:event:*", lambda k: k.startswith("sb:event:")),
    ("RQ job rq:job:*", lambda k: k.startswith("rq:job:")),
    ("RQ results rq:results:*", lambda k: k.startswith("rq:results:")),
    ("RQ queues and registries", lambda k: k.startswith("rq:")),
    ("events index sb:events", lambda k: k in ("sb:events", "sb:dead")),
    ("seen marks sb:seen:*", lambda k: k.startswith("sb:seen:")),
    ("memory: booking", lambda k: k.startswith("sb:mem:") and ":booking:" in k),
    ("memory: customer", lambda k: k.startswith("sb:mem:") and ":customer:" in k),
    ("memory: order", lambda k: k.startswith("sb:mem:") and ":order:" in k),
    ("agenda index sb:agenda:*", lambda k: k.startswith("sb:agenda:")),
    ("sync marks sb:synced:*", lambda k: k.startswith("sb:synced:")),
    ("everything else", lambda k: True),
]

CONFIG = """# Written by bench/storage.py: product defaults for retention, a few realistic mappings.
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{secret}"]
redis_url: "{redis_url}"
retry:
  schedule: [30, 120, 600]
connectors:
  crm:
    type: http
    url: "{destination}"
    timeout: 10
mappings:
  - name: bookings-to-crm
    on: ["booking.*"]
    actions:
      - connector: crm
        action: sync
        name: booking
        body:
          id: "{{{{ booking.id }}}}"
          estado: "{{{{ booking.estado }}}}"
          when: "{{{{ booking.fecha }}}} {{{{ booking.hora_inicio }}}}"
          customer: "{{{{ booking.cliente.nombre }}}}"
  - name: payments
    on: ["payment.*"]
    actions:
      - connector: crm
        body: {{type: "{{{{ type }}}}", booking: "{{{{ data.booking.id }}}}"}}
  - name: orders
    on: ["order.*"]
    actions:
      - connector: crm
        body: {{numero: "{{{{ order.numero }}}}", estado: "{{{{ order.estado }}}}"}}
  - name: customers
    on: ["customer.*"]
    actions:
      - connector: crm
        body: {{id: "{{{{ customer.id }}}}", nombre: "{{{{ customer.nombre }}}}"}}
"""


def _shift_days(value: Any, days: int) -> Any:
    """Appointment dates moved by `days` (the stories' dates are fixed; they must lie ahead)."""
    if isinstance(value, dict):
        return {k: _shift_days(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift_days(v, days) for v in value]
    if isinstance(value, str) and _DAY.match(value):
        return (date.fromisoformat(value) + timedelta(days=days)).isoformat()
    return value


def make_bodies(count: int) -> list[bytes]:
    """`count` events: each salon's own stories, interleaved by their place on the time line."""
    shift = (date.today() + timedelta(days=7) - date(2026, 2, 1)).days  # stories book Feb-Apr 2026
    events = []
    for salon in range(SALONS):
        share = count // SALONS + (1 if salon < count % SALONS else 0)
        for event in build_stream(share, seed=100 + salon, rate=1.0, shuffle_seconds=0, duplicates=0).events:
            event.envelope["tenant_id"] = f"salon-{salon + 1:04d}"
            event.envelope["data"] = _shift_days(event.envelope["data"], shift)
            events.append(event)
    events.sort(key=lambda e: e.position)
    return [json.dumps(e.envelope, ensure_ascii=False).encode() for e in events]


@dataclass
class Snapshot:
    used_memory: int
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    keys: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sizes: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    ttl: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    action_state_bytes: int = 0


def family_of(key: str) -> str:
    return next(name for name, test in FAMILIES if test(key))


def snapshot(redis: Redis) -> Snapshot:
    """MEMORY USAGE (SAMPLES 0) and TTL of every key, by family; the action states' own bytes."""
    snap = Snapshot(int(redis.info("memory")["used_memory"]))
    keys = [k.decode() for k in redis.scan_iter(count=2000) if not k.startswith(b"salon-bridge-")]
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
            pipe.ttl(key)
        answers = pipe.execute()
        for n, key in enumerate(batch):
            size, ttl = answers[2 * n] or 0, answers[2 * n + 1]
            name = family_of(key)
            snap.bytes[name] += size
            snap.keys[name] += 1
            snap.sizes[name].append(size)
            if ttl > 0:
                snap.ttl[name].append(ttl)
        records = [k for k in batch if k.startswith("sb:event:")]
        pipe = redis.pipeline(transaction=False)
        for key in records:
            pipe.hgetall(key)
        for raw in pipe.execute():
            snap.action_state_bytes += sum(len(k) + len(v) for k, v in raw.items() if k.startswith(b"a:"))
    return snap


def ingest(config_path: Path, redis: Redis, bodies: list[bytes]) -> None:
    from bridge.ingest import Ingestor
    from bridge.queue import work_queue
    from mappings.config import load_config

    ingestor = Ingestor(load_config(config_path), redis, work_queue(redis))
    for body in bodies:
        outcome = ingestor.handle(body, sign(body, SECRET))
        if outcome.status not in (200, 202):
            raise BenchError(f"the bridge did not accept an event: {outcome.status} {outcome.body}")


def wait_processed(redis: Redis, workers: list[Child], timeout: float) -> float:
    """Until nothing is queued, running or scheduled for a second (jobs of a locked entity come back)."""
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    started, quiet_since = time.monotonic(), None
    while time.monotonic() - started < timeout:
        for child in workers:
            child.check_alive()
        busy = queue.count + queue.started_job_registry.count + queue.scheduled_job_registry.count
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            return quiet_since - started
        time.sleep(0.1)
    raise BenchError(f"not processed after {timeout:g} s ({queue.count} still queued)")


def stream_facts(bodies: list[bytes]) -> dict[str, float]:
    envelopes = [json.loads(b) for b in bodies]
    kinds: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for e in envelopes:
        data = e["data"]
        for kind, obj in (("booking", data.get("booking")), ("order", data.get("order"))):
            if isinstance(obj, dict) and "id" in obj:
                kinds[kind].add((e["tenant_id"], str(obj["id"])))
        for obj in (data.get("customer"), data.get("cliente"), (data.get("booking") or {}).get("cliente")):
            if isinstance(obj, dict) and "id" in obj:
                kinds["customer"].add((e["tenant_id"], str(obj["id"])))
    booking_events = sum(1 for e in envelopes if "booking" in e["data"])
    return {
        "events": len(bodies),
        "raw": statistics.fmean(len(b) for b in bodies),
        "bookings": len(kinds["booking"]),
        "orders": len(kinds["order"]),
        "customers": len(kinds["customer"]),
        "events_per_booking": booking_events / max(1, len(kinds["booking"])),
    }


def families_table(after_ingest: Snapshot, after: Snapshot, events: int) -> str:
    rows = []
    for name, _ in FAMILIES:
        for label, snap in (("ingest", after_ingest), ("processed", after)):
            if not snap.keys.get(name):
                continue
            sizes = sorted(snap.sizes[name])
            ttl = statistics.median(snap.ttl[name]) / 86400 if snap.ttl[name] else None
            rows.append(
                [
                    name,
                    label,
                    snap.keys[name],
                    snap.bytes[name] // snap.keys[name],
                    sizes[len(sizes) // 2],
                    sizes[int(len(sizes) * 0.9)],
                    f"{snap.bytes[name] / events:,.0f}",
                    f"{ttl:,.2f}" if ttl is not None else "-",
                ]
            )
    headers = ["family", "after", "keys", "avg B/key", "p50 B", "p90 B", "B/event", "TTL days (median)"]
    return table(headers, rows)


def lifetime_days(snap: Snapshot, name: str) -> float:
    return statistics.median(snap.ttl[name]) / 86400 if snap.ttl.get(name) else 0.0


def sizing(after: Snapshot, facts: dict[str, float], retention: Any) -> tuple[str, list[str]]:
    """Redis memory held at steady state, from the measured sizes and how long each family lives."""
    per = {name: after.bytes[name] / after.keys[name] for name, _ in FAMILIES if after.keys.get(name)}
    events = facts["events"]
    # The event side: each family's bytes per event, held for its own TTL (as Redis holds it).
    event_side = ["event record sb:event:*", "RQ job rq:job:*", "RQ results rq:results:*", "seen marks sb:seen:*"]
    per_event_day = {n: after.bytes[n] / events * lifetime_days(after, n) for n in event_side if n in per}
    index_days = retention.events / 86400
    per_event_day["events index sb:events"] = after.bytes.get("events index sb:events", 0) / events * index_days
    lead_days, bookings_after = 14.0, (retention.bookings or 45 * 86400) / 86400
    booking_days = lead_days + bookings_after
    bookings_per_event = facts["bookings"] / events
    orders_per_event = facts["orders"] / events
    booking_bytes = per.get("memory: booking", 0) + after.bytes.get("agenda index sb:agenda:*", 0) / max(
        1, after.keys.get("memory: booking", 1)
    )
    order_days = (retention.orders or 90 * 86400) / 86400
    customers_per_salon, events_per_salon = 3000, 200
    assumptions = [
        f"measured stream: {facts['events_per_booking']:.1f} events per booking, "
        f"{bookings_per_event:.2f} bookings and {orders_per_event:.3f} orders per event",
        f"a booking is kept {lead_days:g} days of lead time (booked that far ahead on average) + "
        f"{bookings_after:g} days after its day; an order {order_days:g} days after its last event",
        f"{customers_per_salon} customers per salon seen within retention.customers "
        f"({(retention.customers or 400 * 86400) / 86400:g} days); a salon has {events_per_salon} events/day",
        "event-side families live as long as the TTL Redis holds for them (median of the measured keys); "
        f"the events index {index_days:g} days",
    ]
    rows = []
    for label, per_day, salons in (
        ("one salon", events_per_salon, 1),
        ("100 salons", events_per_salon * 100, 100),
        ("platform", 1_000_000, 1_000_000 / events_per_salon),
    ):
        event_bytes = per_day * sum(per_event_day.values())
        bookings = per_day * bookings_per_event * booking_days
        memory_bytes = bookings * booking_bytes
        memory_bytes += per_day * orders_per_event * order_days * per.get("memory: order", 0)
        memory_bytes += salons * customers_per_salon * per.get("memory: customer", 0)
        total = event_bytes + memory_bytes
        rows.append(
            [
                label,
                f"{per_day:,.0f}",
                f"{bookings:,.0f}",
                _human(event_bytes),
                _human(memory_bytes),
                _human(total),
                _human(total * 1.5),
            ]
        )
    headers = ["install", "events/day", "bookings held", "event log + RQ", "entity memory", "total", "maxmemory (x1.5)"]
    return table(headers, rows), assumptions


def _human(n: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6393/3")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print_header("storage per event and sizing")
    bodies = make_bodies(args.events)
    facts = stream_facts(bodies)
    print(
        f"{facts['events']:,.0f} events across {SALONS} salons: raw JSON {facts['raw']:,.0f} B per event on average; "
        f"{facts['bookings']:,.0f} bookings, {facts['orders']:,.0f} orders, {facts['customers']:,.0f} customers"
    )
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp, BenchRedis(args.redis_url) as bench_redis:
        workdir = Path(tmp)
        redis = bench_redis.redis
        port = free_port()
        fake = [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(port)]
        destination = Child("destination", fake, workdir)
        workers: list[Child] = []
        try:
            wait_for_port(port, destination)
            config = workdir / "config.yaml"
            config.write_text(
                CONFIG.format(secret=SECRET, redis_url=args.redis_url, destination=f"http://127.0.0.1:{port}/hooks")
            )
            empty = int(redis.info("memory")["used_memory"])
            started = time.monotonic()
            ingest(config, redis, bodies)
            print(f"ingest: {time.monotonic() - started:,.1f} s")
            after_ingest = snapshot(redis)
            command = [str(VENV_BIN / "salon-bridge"), "worker", "--config", str(config)]
            workers = [Child(f"worker-{n}", command, workdir) for n in range(args.workers)]
            took = wait_processed(redis, workers, timeout=max(300.0, args.events / 20))
            print(f"processing: {took:,.1f} s with {args.workers} workers")
            after = snapshot(redis)
        finally:
            for child in workers:
                child.stop()
            destination.stop()
        from mappings.config import load_config

        retention = load_config(config).model.retention
    events = int(facts["events"])
    print()
    print(families_table(after_ingest, after, events))
    print()
    for label, snap in (("right after ingest", after_ingest), ("after processing", after)):
        total = sum(snap.bytes.values())
        print(
            f"{label}: MEMORY USAGE sum {total / events:,.0f} B/event, used_memory delta "
            f"{(snap.used_memory - empty) / events:,.0f} B/event ({(snap.used_memory - empty) / (1 << 20):,.1f} MB)"
        )
    print(f"action states inside event records: {after.action_state_bytes / events:,.0f} B/event")
    memory = [n for n, _ in FAMILIES if n.startswith("memory:")]
    beyond = sum(b for n, b in after.bytes.items() if n not in memory)
    print(f"beyond entity memory: {beyond / events:,.0f} B/event after processing")
    bookings = after.keys.get("memory: booking", 0)
    if bookings:
        print(f"per remembered booking: {after.bytes['memory: booking'] / bookings:,.0f} B (MEMORY USAGE of its key)")
    print()
    sizing_table, assumptions = sizing(after, facts, retention)
    print("sizing (steady state, product default retention):")
    for line in assumptions:
        print(f"  - {line}")
    print(sizing_table)


if __name__ == "__main__":
    main()
