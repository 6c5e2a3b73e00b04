"""The chaos run's Redis scenarios (issue 21, docs/reliability.md "When Redis is not what it must be"):

- `--redis-policy allkeys-lru --maxmemory 20mb`: an evicting Redis. The bridge must refuse it:
  `serve` and the workers exit at start naming the setting and the fix; nothing is posted.
- `--maxmemory 20mb` (noeviction): at `--fill-at` of the stream the run fills Redis with ballast
  until it refuses writes, keeps it full `--full-seconds`, then deletes the ballast ("memory is
  freed"). While full every webhook must be answered 503 and /readyz must say not ready; no
  worker may exit; afterwards everything must be processed (the usual end-to-end checks).
- `--no-aof`: Redis keeps nothing on disk; its crash (`--redis-down`) is a restart empty. The
  bridge must warn at start and in /readyz, workers must stay alive and register again, and an
  action that misses data lost with Redis must say so. Losses are expected: they are counted.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError

BALLAST = "chaos:ballast:"
BALLAST_VALUE = b"x" * 20_000


def redis_arguments(policy: str, maxmemory: str | None, aof: bool) -> list[str]:
    """redis-server arguments after PrivateRedis's own (later ones win)."""
    extra = ["--maxmemory-policy", policy]
    if maxmemory:
        extra += ["--maxmemory", maxmemory]
    if not aof:
        extra += ["--appendonly", "no", "--save", ""]
    return extra


def fill(redis: Redis) -> int:
    """Write ballast until Redis refuses (noeviction at maxmemory): large values, then smaller ones
    until even a tiny write is refused, so that no webhook fits in the margin. Returns the keys written."""
    written = 0
    for size in (20_000, 1_000, 10):
        while True:
            try:
                redis.set(f"{BALLAST}{written}", BALLAST_VALUE[:size])
            except OutOfMemoryError:
                break
            written += 1
    return written


def free(redis: Redis) -> None:
    keys = list(redis.scan_iter(f"{BALLAST}*", count=1000))
    for start in range(0, len(keys), 500):
        redis.delete(*keys[start : start + 500])


@dataclass
class ReadyzWatch:
    """/readyz read once a second: how often it said what, and when."""

    url: str
    answers: Counter[str] = field(default_factory=Counter)
    warnings: set[str] = field(default_factory=set)
    timeline: list[tuple[float, int, list[str], int | None]] = field(default_factory=list)
    _last: float = 0.0

    def poll(self) -> None:
        now = time.time()
        if now - self._last < 1.0:
            return
        self._last = now
        try:
            response = requests.get(self.url, timeout=2)
            body = response.json()
        except (requests.RequestException, ValueError):
            self.answers["no answer"] += 1
            return
        problems = [str(p) for p in body.get("problems", [])]
        self.warnings.update(str(w) for w in body.get("warnings", []))
        self.timeline.append((now, response.status_code, problems, body.get("workers")))
        if not problems:
            self.answers[f"{response.status_code} ready"] += 1
        for problem in problems:
            self.answers[f"{response.status_code} {problem.split(':')[0].split(' (')[0]}"] += 1

    def between(self, start: float, end: float) -> list[tuple[float, int, list[str], int | None]]:
        return [entry for entry in self.timeline if start <= entry[0] <= end]

    def no_worker_after(self, start: float) -> float:
        """Seconds after `start` during which /readyz said that no worker was alive."""
        seen = [at for at, _, problems, _ in self.timeline if at >= start and any("no worker" in p for p in problems)]
        return max(seen) - start if seen else 0.0


@dataclass
class FullSpell:
    """One spell of a full Redis: filled, held, freed; what the platform and /readyz saw meanwhile."""

    filled_at: float = 0.0
    freed_at: float = 0.0
    ballast_keys: int = 0
    used_mb: float = 0.0

    def start(self, redis: Redis) -> None:
        self.ballast_keys = fill(redis)
        self.filled_at = time.time()
        self.used_mb = round(int(redis.info("memory")["used_memory"]) / 1e6, 1)
        print(f"chaos: Redis filled to its maxmemory ({self.used_mb} MB, {self.ballast_keys} ballast keys)", flush=True)

    def end(self, redis: Redis) -> None:
        free(redis)
        self.freed_at = time.time()
        print(f"chaos: ballast deleted after {self.freed_at - self.filled_at:.0f} s: memory freed", flush=True)


def log_lines(paths: list[Path], needle: str) -> list[str]:
    """Lines of the run's logs that contain `needle` (what the bridge said)."""
    found = []
    for path in paths:
        if path.exists():
            found += [line.strip() for line in path.read_text(errors="replace").splitlines() if needle in line]
    return found


def refusal_verdict(serve_log: Path, workers_log: Path, serve_code: int | None, worker_codes: list[int | None]) -> int:
    """An evicting Redis: did `serve` and every worker refuse to start, saying why and how to fix it?"""
    said = log_lines([serve_log, workers_log], "Redis evicts keys when it is full")
    print("\n== salon-bridge chaos run: an evicting Redis ==")
    print(f"{'serve exit status':<58} {serve_code}")
    print(f"{'worker exit statuses':<58} {worker_codes}")
    for line in sorted(set(said))[:4]:
        print(f"  the bridge said: {line}")
    refused = serve_code == 1 and all(code == 1 for code in worker_codes) and len(said) == 1 + len(worker_codes)
    print(
        "\nGREEN: the bridge refused to run on an evicting Redis, naming the setting and the fix"
        if refused
        else "\nRED: the bridge did not refuse an evicting Redis"
    )
    return 0 if refused else 1


def ballast_is_gone(redis: Redis) -> bool:
    try:
        return next(redis.scan_iter(f"{BALLAST}*", count=1000), None) is None
    except RedisError:
        return False
