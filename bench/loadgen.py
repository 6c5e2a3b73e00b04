"""The load generator of the ingest benchmark, and a check that it is not the bottleneck.

    .venv/bin/python bench/loadgen.py --seconds 5        # its ceiling against a trivial server

It posts pre-signed, distinct bodies on loopback at a fixed number of connections (keep-alive,
closed loop: each connection sends its next request when the answer came) for a fixed time.
With Debian's `wrk` installed (`apt-get install -y wrk`) it drives wrk with bench/wrk_bodies.lua;
otherwise (or with --python) an asyncio generator in this file does the same, more slowly.
The ceiling check posts the same bodies to bench/fake_destination.py, which answers 202 at once
from one asyncio process: the rate reached there is a floor of what the generator can send, to
compare with the rates measured against the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from bench.common import (  # noqa: E402
    BENCH_DIR,
    PYTHON,
    Child,
    event_type_of,
    free_port,
    make_events,
    percentile,
    sign,
    wait_for_port,
)

WRK_SCRIPT = BENCH_DIR / "wrk_bodies.lua"


@dataclass
class LoadResult:
    """What one run of the load generator saw."""

    tool: str
    seconds: float
    requests: int
    statuses: dict[int, int]
    socket_errors: int
    timeouts: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    wrapped: bool = False
    extra: dict[str, float] = field(default_factory=dict)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    @property
    def errors(self) -> int:
        """Anything but an accepted (2xx) answer: socket errors, timeouts, 4xx/5xx."""
        not_2xx = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return self.socket_errors + self.timeouts + not_2xx

    def rate(self, status: int | None = None) -> float:
        n = self.requests if status is None else self.count(status)
        return n / self.seconds if self.seconds else 0.0


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    """One request a line: signature, event type, body (JSON has no raw newline or tab)."""
    with path.open("wb") as out:
        for body in bodies:
            assert b"\n" not in body and b"\t" not in body
            out.write(f"{sign(body)}\t{event_type_of(body)}\t".encode() + body + b"\n")
    return path


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    url: str, bodies_file: Path, connections: int, seconds: float, python: bool = False, threads: int = 1
) -> LoadResult:
    if python or not have_wrk():
        return asyncio.run(_python_load(url, bodies_file, connections, seconds))
    return _wrk_load(url, bodies_file, connections, seconds, threads)


def _wrk_load(url: str, bodies_file: Path, connections: int, seconds: float, threads: int) -> LoadResult:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(bodies_file),
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
    data = json.loads(line[len("WRK_JSON ") :])
    return LoadResult(
        tool="wrk",
        seconds=data["duration_us"] / 1e6,
        requests=data["requests"],
        statuses={int(k): v for k, v in data["statuses"].items()},
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"],
        timeouts=data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        wrapped=bool(data["wrapped"]),
    )


async def _python_load(url: str, bodies_file: Path, connections: int, seconds: float) -> LoadResult:
    """The same closed loop as wrk, in asyncio: each connection posts its share of the bodies."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port_text = host_port.partition(":")
    port = int(port_text or 80)
    requests = []
    for line in bodies_file.read_bytes().splitlines():
        signature, event_type, body = line.split(b"\t", 2)
        head = (
            f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
            f"X-SalonBookIt-Signature: {signature.decode()}\r\nX-SalonBookIt-Event: {event_type.decode()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors = {"socket": 0, "timeouts": 0}
    wrapped = False
    deadline = time.perf_counter() + seconds

    async def connection(number: int) -> None:
        nonlocal wrapped
        mine = requests[number::connections]
        position = 0
        reader = writer = None
        while time.perf_counter() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                if position >= len(mine):
                    position, wrapped = 0, True
                started = time.perf_counter()
                writer.write(mine[position])
                position += 1
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                lines = head.decode("latin-1").split("\r\n")
                length, close = 0, False
                for header in lines[1:]:
                    name, _, value = header.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and value.strip().lower() == "close":
                        close = True
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                status = int(lines[0].split()[1])
                statuses[status] = statuses.get(status, 0) + 1
                if close:
                    writer.close()
                    reader = writer = None
            except TimeoutError:
                errors["timeouts"] += 1
                reader = writer = None
            except (OSError, asyncio.IncompleteReadError):
                errors["socket"] += 1
                reader = writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        tool="python",
        seconds=elapsed,
        requests=len(latencies),
        statuses=statuses,
        socket_errors=errors["socket"],
        timeouts=errors["timeouts"],
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        p999_ms=percentile(latencies, 0.999) * 1000,
        max_ms=(latencies[-1] if latencies else 0.0) * 1000,
        wrapped=wrapped,
    )


def ceiling(seconds: float, connections: int, python: bool, workdir: Path) -> LoadResult:
    """The generator against a server that answers 202 at once: a floor of the generator's ceiling."""
    port = free_port()
    server = Child(
        "ceiling-server",
        [PYTHON, str(BENCH_DIR / "fake_destination.py"), "--port", str(port), "--status", "202"],
        workdir,
    )
    try:
        wait_for_port(port, server)
        bodies = write_bodies(workdir / "ceiling-bodies.txt", make_events(20_000, prefix="ceiling"))
        return run_load(f"http://127.0.0.1:{port}/webhooks", bodies, connections, seconds, python=python)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--python", action="store_true", help="use the Python generator even when wrk is installed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        result = ceiling(args.seconds, args.connections, args.python, Path(tmp))
    print(
        f"{result.tool}: {result.rate():,.0f} requests/s against a trivial server, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors}"
    )


if __name__ == "__main__":
    main()
