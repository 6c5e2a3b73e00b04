"""Shared pieces of the benchmarks: the bench Redis database, child processes, sample events,
resident memory, the machine's description and result tables.

Not a benchmark itself. Every benchmark script imports it as `bench.common` (run them from the
repository root, e.g. `.venv/bin/python bench/ingest.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
SAMPLES_DIR = ROOT / "bridge" / "samples"
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/3"  # test runs claim databases from 15 down
SECRET = "bench-secret-not-for-production"
# Test runs (tests/conftest.py) claim a database with this key; holding it keeps them off ours.
TESTS_CLAIM_KEY = "salon-bridge-tests:claimed-by"
BENCH_CLAIM_KEY = "salon-bridge-bench:claimed-by"
CLAIM_TTL = 3600


class BenchError(Exception):
    """The benchmark cannot run; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# The bench Redis database


class BenchRedis:
    """One Redis database for the benchmarks: must be empty at start, is claimed (so test runs
    and other benchmark runs keep off it), flushed between measurements and left empty."""

    def __init__(self, url: str = DEFAULT_REDIS_URL):
        self.url = url
        self.redis = Redis.from_url(url)
        self._claimed = False

    def claim(self) -> BenchRedis:
        try:
            self.redis.ping()
        except Exception as exc:
            raise BenchError(f"cannot reach Redis at {self.url}: {exc}; start redis-server first") from None
        owner = self.redis.get(BENCH_CLAIM_KEY)
        if owner is not None and _pid_alive(int(owner)):
            raise BenchError(f"{self.url} is in use by another benchmark run (pid {int(owner)})")
        others = [k for k in self.redis.scan_iter(count=1000) if k not in (BENCH_CLAIM_KEY.encode(),)]
        if others and owner is None:
            raise BenchError(
                f"{self.url} is not empty ({self.redis.dbsize()} keys, e.g. {others[0]!r}); "
                "pass --redis-url with an empty database number (the benchmarks flush it)"
            )
        self._claimed = True
        self.reset()
        return self

    def reset(self) -> None:
        """Empty the database, keeping the claims (atomically, so no test run slips in between)."""
        assert self._claimed, "claim() first"
        pid = str(os.getpid())
        pipe = self.redis.pipeline(transaction=True)
        pipe.flushdb()
        pipe.set(BENCH_CLAIM_KEY, pid, ex=CLAIM_TTL)
        pipe.set(TESTS_CLAIM_KEY, f"bench-{pid}", ex=CLAIM_TTL)
        pipe.execute()

    def release(self) -> None:
        if self._claimed:
            self.redis.flushdb()
            self._claimed = False
        self.redis.close()

    def __enter__(self) -> BenchRedis:
        return self.claim()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Child processes


class Child:
    """A process this benchmark started, in its own session, with its output in a log file."""

    def __init__(self, name: str, command: Sequence[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.command = list(command)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.name} exited ({self.process.returncode}); end of {self.log_path}:\n{tail}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the child's own process group (it and what it forked), then SIGKILL."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait()
        _signal_group(self.pid, signal.SIGKILL)  # anything left in its group
        self._log.close()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, child: Child | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None:
            child.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def children_of(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in children_of(pid):
        out += [child, *descendants(child)]
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (0 for a process that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def redis_cpu_seconds(redis: Any) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def rss_mb(pid: int) -> float:
    """Resident set size in MB (VmRSS), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Events


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_FILLER = (
    "Clienta habitual; prefiere a Lucía para el color. Alergia leve al amoníaco: usar tinte sin amoníaco. "
    "Pide recordatorio por WhatsApp el día anterior. Aparca en la calle Mayor; llega 10 minutos antes. "
    "Último servicio: mechas balayage y corte a capas, satisfecha. Ofrecer tratamiento de keratina. "
)


def _samples() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(SAMPLES_DIR.glob("*.json"))}


def make_events(count: int, seed: int = 1, prefix: str = "bench", entities: int | None = None) -> list[bytes]:
    """`count` distinct, signed-ready event bodies: the 13 sample types in turn, ids unique, each
    padded (in a notes field, as a real booking's notes) to between 1 and 2 KB of JSON.

    `entities`: how many distinct bookings/orders/customers they refer to (default: a new one per
    event, so workers never wait on each other's entity lock)."""
    rng = random.Random(seed)
    samples = _samples()
    types = sorted(samples)
    run = uuid.uuid4().hex[:8]
    bodies = []
    for n in range(count):
        event = json.loads(json.dumps(samples[types[n % len(types)]]))
        event["id"] = f"evt_{prefix}_{run}_{n:07d}"
        event["tenant_id"] = f"salon-{n % 7}"
        event["created"] = f"2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:{(n * 7) % 60:02d}Z"
        entity = n if entities is None else rng.randrange(entities)
        data = event["data"]
        holder = None
        for name in ("booking", "order", "customer", "cliente"):
            obj = data.get(name)
            if isinstance(obj, dict) and "id" in obj:
                obj["id"] = (100_000 if name in ("booking", "order") else 500_000) + entity
                holder = holder if holder is not None else obj
                cliente = obj.get("cliente")
                if isinstance(cliente, dict) and "id" in cliente:
                    cliente["id"] = 500_000 + entity
        holder = holder if holder is not None else data
        target = rng.randint(1000, 2000)
        holder["notas"] = ""
        size = len(json.dumps(event, ensure_ascii=False).encode())
        while size < target:
            take = _FILLER[: max(1, target - size)]
            holder["notas"] += take
            size = len(json.dumps(event, ensure_ascii=False).encode())
        bodies.append(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode())
    return bodies


def event_type_of(body: bytes) -> str:
    return str(json.loads(body)["type"])


# ---------------------------------------------------------------------------------------------
# Config


def write_config(path: Path, redis_url: str, destination_url: str, timeout: float = 10.0) -> Path:
    """A config that maps every event type to one `http` action on the (fake) destination."""
    path.write_text(
        f"""# Written by the salon-bridge benchmarks.
version: 1
timezone: Europe/Madrid
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
  crm:
    type: http
    url: "{destination_url}"
    timeout: {timeout}
mappings:
  - name: all-to-crm
    on: ["*"]
    actions:
      - connector: crm
        name: notify
        body:
          event: "{{{{ event.id }}}}"
          type: "{{{{ type }}}}"
          tenant: "{{{{ tenant_id }}}}"
          booking: "{{{{ data.booking.id if data.booking is defined else '' }}}}"
""",
        encoding="utf-8",
    )
    return path


# ---------------------------------------------------------------------------------------------
# Figures


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal too)."""
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in text_rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


@dataclass
class Check:
    """One target: what, measured, the threshold, and whether it is met."""

    what: str
    measured: str
    target: str
    met: bool

    def row(self) -> list[str]:
        return [self.what, self.measured, self.target, "met" if self.met else "MISSED"]


# ---------------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load average (1 min) at start": f"{os.getloadavg()[0]:.2f}",
    }
    try:
        server = Redis.from_url(DEFAULT_REDIS_URL).info("server")
        info["redis server"] = str(server.get("redis_version"))
    except Exception:
        info["redis server"] = "?"
    from importlib.metadata import version

    for package in ("rq", "redis", "granian", "flask", "werkzeug", "requests"):
        try:
            info[package] = version(package)
        except Exception:
            info[package] = "?"
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.splitlines()
        info["wrk"] = out[0].split(" Copyright")[0] if out else "present"
    else:
        info["wrk"] = "not installed"
    return info


def machine_table() -> str:
    return table(["machine", ""], machine().items())


def print_header(title: str) -> None:
    print(f"\n## {title}\n", flush=True)
