"""Scheduled sends at scale: Redis per pending plan, (re)planning cost as plans grow, fire rate and lateness.

    .venv/bin/python bench/schedules.py [--plans 100000] [--burst 1000] [--redis-url redis://127.0.0.1:6379/14]

1. Bytes of Redis per pending plan (the sorted-set entry and the plan data; the action states live
   on the event record, measured separately).
2. Time for a worker to process a booking.updated that re-plans, with 1,000 and with `--plans`
   pending plans (a ratio near 1: planning does not grow with the number of plans).
3. Bursts of `--burst` plans fired by real `salon-bridge worker`s (dry run): due in the same
   second (1,000 appointments at 10:00 with a 24 h reminder) on 1, 2 and 4 workers, and due over
   one minute on 1 worker; fire rate and lateness (actual - planned) p50/p99.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, BenchRedis, median, percentile, print_header, table  # noqa: E402
from bridge import runtime, schedules  # noqa: E402
from bridge.jobs import process_event  # noqa: E402
from bridge.runtime import Runtime  # noqa: E402
from bridge.store import event_key  # noqa: E402
from mappings.config import load_config  # noqa: E402

ZONE = ZoneInfo("Europe/Madrid")


def config_text(redis_url: str, offset: int, anchor: str = "booking.start") -> str:
    return f"""version: 1
timezone: Europe/Madrid
webhook: {{secrets: ["{SECRET}"]}}
redis_url: "{redis_url}"
connectors:
  crm: {{type: http, url: "http://127.0.0.1:9/hooks", dry_run: true}}
mappings:
  - name: recordatorio
    on: ["booking.created", "booking.updated"]
    schedule: {{at: "{anchor} {"-" if offset >= 0 else "+"} {abs(offset)}s"}}
    actions:
      - connector: crm
        body: {{code: "{{{{ booking.codigo }}}}"}}
"""


def booking_event(
    rt: Runtime, n: int, start: datetime, kind: str = "booking.created", created: datetime | None = None
) -> str:
    """Store one booking event as ingest does (the record only) and return its key."""
    envelope = {
        "id": f"evt_{kind}_{n}",
        "type": kind,
        "created": (created or datetime.now(ZONE)).isoformat(),
        "tenant_id": "bench-salon",
        "data": {
            "booking": {
                "id": n,
                "codigo": f"B{n:07d}",
                "fecha": start.date().isoformat(),
                "hora_inicio": f"{start:%H:%M}",
                "hora_fin": f"{start + timedelta(minutes=30):%H:%M}",
                "estado": "confirmada",
                "cliente": {"id": 100000 + n, "nombre": "Cliente de prueba", "email": f"c{n}@example.com"},
            }
        },
    }
    key = event_key(envelope["id"])
    rt.redis.hset(f"sb:event:{key}", mapping={"body": json.dumps(envelope), "received_at": time.time()})
    return key


def plan_bytes(rt: Runtime, count: int) -> float:
    before = int(rt.redis.info("memory")["used_memory"])
    pipe = rt.redis.pipeline(transaction=False)
    for n in range(count):
        plan = schedules.Plan(
            schedules.plan_id("recordatorio-24h", "uuid-tenant-0123", "booking", str(1_000_000 + n)),
            f"e-evt_{n:012d}",
            time.time() + 86400 + n,
            time.time() + 2 * 86400 + n,
        )
        pipe.hset(schedules.PLAN_DATA, plan.id, plan.to_json())
        pipe.zadd(schedules.PLANS, {plan.id: plan.due})
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return (int(rt.redis.info("memory")["used_memory"]) - before) / count


def replan_seconds(rt: Runtime, first: int, count: int, start: datetime) -> list[float]:
    """Process `count` booking.created then booking.updated (a move) events; seconds per update."""
    keys = [booking_event(rt, first + n, start) for n in range(count)]
    for key in keys:
        process_event(key)
    times = []
    for n in range(count):
        key = booking_event(rt, first + n, start + timedelta(hours=1), "booking.updated")
        began = time.perf_counter()
        process_event(key)
        times.append(time.perf_counter() - began)
    return times


def burst(
    rt: Runtime, config_path: Path, count: int, start: datetime, due: float, spread: float, workers: int
) -> list[float]:
    """`count` bookings at `start` whose plans are due from `due` over `spread` seconds (0: all in
    the same second), fired by `workers` real workers; the lateness (actual - planned) of each send."""
    first = 2_000_000 + int(due) % 100_000 * 10  # distinct bookings and events per burst
    for n in range(count):
        created = datetime.fromtimestamp(due + spread * n / count, ZONE) - timedelta(seconds=SPREAD_ANCHOR)
        process_event(booking_event(rt, first + n, start, created=created if spread else None))
    command = [sys.executable, "-m", "bridge.cli", "--log-level", "warning", "worker", "--config", str(config_path)]
    env = {"SALON_BRIDGE_CONFIG": str(config_path), "PATH": "/usr/bin:/bin"}
    started = [subprocess.Popen(command, env=env) for _ in range(workers)]
    try:
        deadline = due + spread + 180
        while time.time() < deadline:
            if rt.redis.zcard(schedules.PLANS) == 0 and time.time() > due + spread:
                break
            time.sleep(0.5)
    finally:
        for worker in started:
            worker.terminate()
        for worker in started:
            worker.wait(20)
    lateness = []
    for n in range(count):
        record = rt.store.find(f"evt_booking.created_{first + n}")
        state = record.actions.get("recordatorio/0") if record else None
        sent = [h for h in (state.history if state else []) if h.get("planned_for")]
        if sent:
            lateness.append(sent[-1]["at"] - sent[-1]["planned_for"])
    return sorted(lateness)


SPREAD_ANCHOR = 60  # the spread bursts' reminders are due this long after their event's `created`


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=200, help="re-planning events measured per size")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    print_header("Scheduled sends")
    with BenchRedis(args.redis_url) as bench, tempfile.TemporaryDirectory() as folder:
        start = (datetime.now(ZONE) + timedelta(days=2)).replace(second=0, microsecond=0)
        config_path = Path(folder) / "config.yaml"
        config_path.write_text(config_text(args.redis_url, 86400), encoding="utf-8")
        rt = Runtime.from_config(load_config(config_path), args.redis_url, dry_run=True)
        runtime.install(rt)
        per_plan = plan_bytes(rt, args.plans)
        bench.reset()
        plan_bytes(rt, 1000)
        small = median(replan_seconds(rt, 0, args.sample, start))
        bench.reset()
        plan_bytes(rt, args.plans)
        large = median(replan_seconds(rt, 0, args.sample, start))
        bench.reset()
        bursts = []
        for label, spread, workers in BURSTS:
            # Planned ahead, as a day's reminders are: due 40 s from now.
            due = float(int(time.time()) + 40)
            start = (datetime.fromtimestamp(due, ZONE) + timedelta(minutes=11)).replace(second=0)
            if spread:
                text = config_text(args.redis_url, -SPREAD_ANCHOR, "event.created")
            else:
                text = config_text(args.redis_url, int(start.timestamp() - due))
            config_path.write_text(text, encoding="utf-8")
            rt = Runtime.from_config(load_config(config_path), args.redis_url, dry_run=True)
            runtime.install(rt)
            lateness = burst(rt, config_path, args.burst, start, due, spread, workers)
            bursts.append((label.format(n=args.burst), workers, spread, lateness))
            bench.reset()
        runtime.install(None)
    rows = [
        ["Redis per pending plan (sorted set + plan data)", f"{per_plan:.0f} B"],
        ["re-plan on booking.updated, 1,000 plans pending (median)", f"{small * 1000:.2f} ms"],
        [f"re-plan on booking.updated, {args.plans:,} plans pending (median)", f"{large * 1000:.2f} ms"],
        ["ratio (large / small)", f"{large / small:.2f}"],
    ]
    for label, workers, spread, lateness in bursts:
        if not lateness:
            rows.append([label, "none sent"])
            continue
        figures = " / ".join(f"{percentile(lateness, q):.2f}" for q in (0.5, 0.99, 1))
        rate = len(lateness) / max(lateness[-1] - lateness[0], 1e-3) if not spread else None
        rows.append([f"{label}: sent, lateness p50 / p99 / max (s)", f"{len(lateness):,}, {figures}"])
        if rate:
            rows.append([f"{label}: fire rate", f"{rate:.0f} sends/s ({rate / workers:.0f} per worker)"])
    print(table(["measure", "figure"], rows))


# (label, seconds the due times spread over, workers)
BURSTS = [
    ("{n:,} due in the same second, 1 worker", 0, 1),
    ("{n:,} due in the same second, 2 workers", 0, 2),
    ("{n:,} due in the same second, 4 workers", 0, 4),
    ("{n:,} due over one minute, 1 worker", 60, 1),
]


if __name__ == "__main__":
    main()
