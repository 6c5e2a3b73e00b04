"""Part `flat` of bench/drain.py: is a job's cost flat in config size and in entity-memory size?

The same drain (--flat-events events, each matching exactly one `http` mapping, one
`salon-bridge worker`) with configs of 1, 20 and 200 mappings, and with entity memory empty or
holding --flat-bookings bookings already, interleaved round by round. Every rate is divided by the
first 1-mapping/empty run of its round; that run is repeated at the end of the round, and the
repeat's ratio is the noise.

The extra mappings are what a platform-wide install has: one per salon, each on the salon's own
connector and tenant, for every event type or a few. None of them matches a drained event (their
tenants are other salons), so each drained event runs exactly one action in every config.

Bookings are remembered through the product's own merge (`EntityMemory.remember_on`, the call a
worker makes for each event), in the drained events' seven salons, dated over the coming 90 days,
so their agenda indexes hold them too.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from redis import Redis

from bench.common import (
    BENCH_DIR,
    PYTHON,
    SAMPLES_DIR,
    SECRET,
    BenchRedis,
    Check,
    Child,
    free_port,
    median,
    print_header,
    table,
    wait_for_port,
)

FLAT_TARGET = 0.9  # a variant's jobs/s over the 1-mapping/empty run of the same round
TIMEZONE = "Europe/Madrid"
# Event-type lists of the extra mappings, in turn: every type, one type, a family.
_EXTRA_ON = (['"*"'], ['"booking.created"'], ['"booking.*"', '"customer.*"'], ['"payment.*"'], ['"order.shipped"'])


@dataclass(frozen=True)
class Variant:
    label: str
    mappings: int
    bookings: int


def variants(bookings: int) -> list[Variant]:
    """One round, in order; the first and the last are the same config (noise)."""
    return [
        Variant("1 mapping", 1, 0),
        Variant("20 mappings", 20, 0),
        Variant("200 mappings", 200, 0),
        Variant(f"1 mapping, {bookings:,} bookings", 1, bookings),
        Variant(f"200 mappings, {bookings:,} bookings", 200, bookings),
        Variant("1 mapping (repeat)", 1, 0),
    ]


def write_flat_config(path: Path, redis_url: str, destination_url: str, mappings: int) -> Path:
    """A config of `mappings` mappings: `mappings - 1` for other salons, then the one every drained
    event matches (all types, all tenants), last, so a router that stops early gains nothing."""
    connectors = [f'  crm-main:\n    type: http\n    url: "{destination_url}"\n    timeout: 10\n']
    blocks = []
    for n in range(mappings - 1):
        on = ", ".join(_EXTRA_ON[n % len(_EXTRA_ON)])
        connectors.append(f'  crm-{n}:\n    type: http\n    url: "{destination_url}"\n    timeout: 10\n')
        blocks.append(
            f"""  - name: salon-{n}-crm
    on: [{on}]
    tenant: ["other-salon-{n}"]
    actions:
      - connector: crm-{n}
        name: notify
        body:
          event: "{{{{ event.id }}}}"
          salon: "other-salon-{n}"
          customer: "{{{{ customer.nombre if customer else '' }}}}"
"""
        )
    blocks.append(
        """  - name: all-to-crm
    on: ["*"]
    actions:
      - connector: crm-main
        name: notify
        body:
          event: "{{ event.id }}"
          type: "{{ type }}"
          tenant: "{{ tenant_id }}"
          booking: "{{ data.booking.id if data.booking is defined else '' }}"
"""
    )
    path.write_text(
        f"""# Written by bench/drain_flat.py: {mappings} mapping(s), one of which matches every drained event.
version: 1
timezone: {TIMEZONE}
webhook:
  secrets: ["{SECRET}"]
  dedupe_window: 1d
redis_url: "{redis_url}"
retry:
  schedule: [30, 120, 600]
  jitter: 0.1
retention:
  events: 1d
  dead_letters: 1d
connectors:
{"".join(connectors)}mappings:
{"".join(blocks)}""",
        encoding="utf-8",
    )
    return path


def booking_envelopes(count: int) -> list[dict[str, Any]]:
    """`count` booking.created envelopes of distinct bookings (ids apart from the drained events'),
    in the drained events' salons, dated over the coming 90 days."""
    sample = json.loads((SAMPLES_DIR / "booking.created.json").read_text(encoding="utf-8"))
    today = datetime.now(UTC).date()
    out = []
    for n in range(count):
        envelope = json.loads(json.dumps(sample))
        envelope["id"] = f"evt_seed_{n:07d}"
        envelope["tenant_id"] = f"salon-{n % 7}"
        envelope["created"] = f"2026-10-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z"
        booking = envelope["data"]["booking"]
        booking["id"] = 5_000_000 + n
        booking["codigo"] = f"SEED{n:07d}"
        booking["fecha"] = (today + timedelta(days=n % 90)).isoformat()
        booking["hora_inicio"] = f"{9 + n % 10:02d}:{(n * 15) % 60:02d}"
        booking["profesional"]["id"] = 1 + n % 12
        booking["cliente"]["id"] = 7_000_000 + n
        out.append(envelope)
    return out


def seed_memory(redis: Redis, count: int, config_path: Path) -> float:
    """Remember `count` bookings through the product's merge, pipelined, kept as the drained
    config keeps them; the seconds it took."""
    from bridge.state import EntityMemory, Keep
    from mappings.config import load_config

    memory = EntityMemory(redis, Keep.of(load_config(config_path)), ZoneInfo(TIMEZONE))
    started = time.monotonic()
    envelopes = booking_envelopes(count)
    for start in range(0, count, 500):
        pipe = redis.pipeline(transaction=False)
        for envelope in envelopes[start : start + 500]:
            memory.remember_on(pipe, envelope)
        pipe.execute()
    return time.monotonic() - started


def routing_micros(config_path: Path) -> float:
    """Microseconds per `mappings_for` of the drained events' types and salons, in-process (the
    lookup each job and each webhook makes), after one warm-up pass."""
    from mappings.config import EVENT_TYPES, load_config

    config = load_config(config_path)
    pairs = [(t, f"salon-{n}") for t in EVENT_TYPES for n in range(7)]
    for event_type, tenant in pairs:
        config.mappings_for(event_type, tenant)
    started = time.perf_counter()
    for _ in range(50):
        for event_type, tenant in pairs:
            config.mappings_for(event_type, tenant)
    return (time.perf_counter() - started) / (50 * len(pairs)) * 1e6


def part_flat(args: argparse.Namespace, bench_redis: BenchRedis, workdir: Path) -> dict[str, Any]:
    from bench.drain import drain_once  # bench.drain runs this part: imported late

    port = free_port()
    destination = Child(
        "destination-flat", [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(port)], workdir
    )
    rounds: list[dict[str, Any]] = []
    try:
        wait_for_port(port, destination)
        url = f"http://127.0.0.1:{port}/hooks"
        configs = {
            m: write_flat_config(workdir / f"config-flat-{m}.yaml", args.redis_url, url, m) for m in (1, 20, 200)
        }
        for m, path in configs.items():
            print(f"routing, {m} mapping(s): {routing_micros(path):.2f} us per lookup", flush=True)
        for round_number in range(1, args.rounds + 1):
            drains = {}
            for variant in variants(args.flat_bookings):

                def seed(redis: Redis, variant: Variant = variant) -> None:
                    if variant.bookings:
                        took = seed_memory(redis, variant.bookings, configs[variant.mappings])
                        print(f"  ({variant.bookings:,} bookings remembered in {took:.1f} s)", flush=True)

                drain = drain_once(
                    "bridge",
                    1,
                    args,
                    bench_redis,
                    configs[variant.mappings],
                    port,
                    workdir,
                    events=args.flat_events,
                    seed=seed,
                    label=f"flat-{variant.mappings}-{variant.bookings}",
                )
                drains[variant.label] = drain
                print(
                    f"round {round_number} {variant.label:<32} {drain.rate:8,.0f} jobs/s "
                    f"({drain.jobs:,} in {drain.seconds:.1f} s)  {drain.statuses}  "
                    f"destination calls {drain.destination_calls:,}",
                    flush=True,
                )
            rounds.append(drains)
    finally:
        destination.stop()
    return flat_report(args, rounds)


def flat_report(args: argparse.Namespace, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    base = variants(args.flat_bookings)[0].label
    rows, checks = [], []
    summary: dict[str, Any] = {}
    noise = 0.0
    for variant in variants(args.flat_bookings):
        rates = [r[variant.label].rate for r in rounds]
        ratios = [r[variant.label].rate / r[base].rate for r in rounds]
        bad = sum(
            sum(n for s, n in d.statuses.items() if s != "done") + abs(d.jobs - d.destination_calls)
            for d in (r[variant.label] for r in rounds)
        )
        ratio = median(ratios)
        summary[variant.label] = {"rate": median(rates), "ratio": ratio, "ratios": ratios, "not_done": bad}
        if variant.label.endswith("(repeat)"):
            noise = max(abs(x - 1) for x in ratios)
        rows.append([variant.label, median(rates), f"{ratio:.2f}x", " ".join(f"{x:.2f}" for x in ratios), bad])
        checks.append(Check(f"flat: {variant.label}: actions not done", str(bad), "0", bad == 0))
        if variant.label != base and not variant.label.endswith("(repeat)"):
            checks.append(
                Check(
                    f"flat: {variant.label} / 1 mapping",
                    f"{ratio:.2f}x",
                    f">= {FLAT_TARGET}x",
                    ratio >= FLAT_TARGET,
                )
            )
    print_header(
        f"Drain cost in config and memory size: {args.flat_events:,} events, one http action each, "
        f"1 worker, {args.rounds} interleaved round(s); ratio to the round's first 1-mapping/empty run"
    )
    print(table(["config", "jobs/s (median)", "ratio (median)", "ratio per round", "not done"], rows))
    print(f"\nnoise (the repeated 1-mapping run, largest deviation from 1.00): {noise:.0%}")
    summary["noise"] = noise
    return {"flat": summary, "checks": checks}
