"""A professional's calendar feed with 2,000 bookings: render time, bytes, and what the cache and
the ETag save; and what the agenda index costs per booking in Redis.

    .venv/bin/python bench/feeds.py [--bookings 2000] [--rounds 20] [--redis-url redis://127.0.0.1:6379/3]

Bookings go in through entity memory as workers put them (EntityMemory.remember, which queues
the agenda index); requests go through the Flask app (test client: no network). Prints medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from bench.common import SAMPLES_DIR, BenchRedis, print_header, table  # noqa: E402

ZONE = "Europe/Madrid"
TENANT = "bench-tenant"
SECRET = "bench-feed-secret-0123456789"


def config_text(redis_url: str) -> str:
    return f"""
version: 1
timezone: {ZONE}
redis_url: "{redis_url}"
webhook:
  secrets: ["bench"]
calendar_feeds:
  secret: "{SECRET}"
staff:
  "5": {{name: "Carlos García"}}
connectors: {{}}
mappings: []
"""


def bookings(count: int) -> list[dict[str, Any]]:
    """`count` bookings of professional 5, four an hour from 9:00, over the feed's window."""
    base = json.loads((SAMPLES_DIR / "booking.created.json").read_text(encoding="utf-8"))
    today = datetime.now(UTC).astimezone(ZoneInfo(ZONE)).date()
    events = []
    for n in range(count):
        day = today - timedelta(days=30) + timedelta(days=n // 16 % 150)
        minutes = 9 * 60 + (n % 16) * 30
        envelope = json.loads(json.dumps(base))
        envelope.update(id=f"evt_{n}", tenant_id=TENANT)
        booking = envelope["data"]["booking"]
        booking.update(
            id=100000 + n,
            codigo=f"C{n:07d}",
            fecha=day.isoformat(),
            hora_inicio=f"{minutes // 60:02d}:{minutes % 60:02d}",
            hora_fin=f"{(minutes + 30) // 60:02d}:{(minutes + 30) % 60:02d}",
        )
        booking["cliente"] = {**booking["cliente"], "id": 5000 + n, "nombre": f"Cliente Número{n}"}
        events.append(envelope)
    return events


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    args = parser.parse_args()

    from app import create_app
    from bridge import agenda
    from bridge.feeds import feed_path, feed_token
    from bridge.state import EntityMemory
    from mappings.config import load_config_text

    print_header(f"Calendar feed of {args.bookings} bookings")
    with BenchRedis(args.redis_url) as bench:
        redis = bench.redis
        config = load_config_text(config_text(args.redis_url))
        events = bookings(args.bookings)

        memory = EntityMemory(redis, 400 * 86400, ZoneInfo(ZONE))
        used_before = int(redis.info("memory")["used_memory"])
        started = time.perf_counter()
        pipe = redis.pipeline(transaction=False)
        for envelope in events:
            memory.remember_on(pipe, envelope)
        pipe.execute()
        remember_ms = (time.perf_counter() - started) * 1000
        index_keys = list(redis.scan_iter("sb:agenda:*"))
        index_bytes = sum(int(redis.memory_usage(k) or 0) for k in index_keys)
        used_after = int(redis.info("memory")["used_memory"])

        app = create_app(config, redis=redis)
        client = app.test_client()
        feeds = app.extensions["salon_bridge"]["feeds"]
        path = feed_path(feed_token(SECRET, TENANT, "5"))
        today = datetime.now(UTC).astimezone(ZoneInfo(ZONE)).date()

        def cold() -> bytes:
            feeds._events.clear()
            return feeds.render(TENANT, "5", today)

        render_ms, body = timed(cold, args.rounds)
        warm_ms, _ = timed(lambda: feeds.render(TENANT, "5", today), args.rounds)
        first = client.get(path)
        etag = first.headers["ETag"]
        cached_ms, _ = timed(lambda: client.get(path), args.rounds)
        gzip_ms, gz = timed(lambda: client.get(path, headers={"Accept-Encoding": "gzip"}), args.rounds)
        hit_ms, hit = timed(lambda: client.get(path, headers={"If-None-Match": etag}), args.rounds)
        assert hit.status_code == 304, hit.status_code
        uncached_ms, _ = timed(lambda: (feeds._cache.clear(), feeds._events.clear(), client.get(path)), args.rounds)
        changed_ms, _ = timed(lambda: (feeds._cache.clear(), client.get(path)), args.rounds)
        query_ms, day = timed(lambda: agenda.agenda(redis, TENANT, today, "5", ZoneInfo(ZONE)), args.rounds)
        count = body.count(b"BEGIN:VEVENT")

        rows = [
            ["render, no VEVENT cached (icalendar)", f"{render_ms:.1f} ms", f"{count} events"],
            ["render, VEVENTs cached", f"{warm_ms:.1f} ms", ""],
            ["GET, nothing cached", f"{uncached_ms:.1f} ms", f"{len(body):,} bytes"],
            ["GET after a change elsewhere in the salon", f"{changed_ms:.1f} ms", ""],
            ["GET, unchanged (cached body)", f"{cached_ms:.2f} ms", ""],
            ["GET, unchanged, gzip", f"{gzip_ms:.2f} ms", f"{len(gz.data):,} bytes"],
            ["GET, If-None-Match hit (304)", f"{hit_ms:.2f} ms", ""],
            ["agenda() of one day", f"{query_ms:.2f} ms", f"{len(day)} bookings"],
            ["index: Redis bytes per booking", f"{index_bytes / args.bookings:.0f} B", f"{len(index_keys)} keys"],
            ["memory + index per booking (used_memory)", f"{(used_after - used_before) / args.bookings:.0f} B", ""],
            ["remember + index, pipelined", f"{remember_ms / args.bookings * 1000:.0f} µs/booking", ""],
        ]
        print(table(["measure", "median", "size"], rows))
        print(f"\ntargets: GET with caching ≤ 50 ms ({'met' if cached_ms <= 50 else 'NOT met'}), "
              f"ETag hit ≤ 2 ms ({'met' if hit_ms <= 2 else 'NOT met'}); "
              f"uncached / cached = {uncached_ms / cached_ms:.0f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
