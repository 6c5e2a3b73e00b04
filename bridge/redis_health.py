"""Is this Redis fit to keep the bridge's data? Its eviction policy, its persistence, room to write.

Everything the bridge accepts lives in Redis (docs/reliability.md, section 7): an evicting Redis
drops accepted events silently, one without persistence loses them on restart, a full one refuses
webhooks. Checked in one round trip (a pipeline) at the start of `serve`, `worker` and `up`, by
`/readyz`, `check-config --online` and the admin pages. A managed Redis may forbid CONFIG (or
INFO): what could not be read is then said, not guessed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from bridge.store import PREFIX, text

# When this Redis's data began: written once (SET NX) when a bridge process starts, never expires.
# Missing, or newer than an event, it means Redis lost data (restarted empty, evicted keys).
DATA_SINCE_KEY = PREFIX + "data-since"
PROBE_KEY = PREFIX + "health:write-probe"  # /readyz writes it (1 byte, 5 s) to see that writes are taken
CHECKED_ENV = "SALON_BRIDGE_REDIS_CHECKED"  # set by `up` for its processes: it checked already

FIX_EVICTION = (
    "set it to noeviction: `CONFIG SET maxmemory-policy noeviction`, and `maxmemory-policy noeviction` "
    "in redis.conf so that it stays after a restart (on a managed Redis: its parameter group or settings)"
)
FIX_PERSISTENCE = (
    "turn on the append-only file: `CONFIG SET appendonly yes`, and `appendonly yes` in redis.conf "
    "(on a managed Redis: its persistence or backup settings)"
)


class RedisUnfit(Exception):
    """Redis is configured so that it would lose accepted events; the message says how to fix it."""


@dataclass
class RedisHealth:
    """What one look at Redis found; None where Redis would not say."""

    policy: str | None = None  # maxmemory-policy
    aof: bool | None = None
    rdb_saves: str | None = None  # CONFIG GET save: "" when no snapshot is ever taken
    used_memory: int | None = None
    maxmemory: int | None = None
    refused_write: str | None = None  # why the write probe was refused; None: accepted or not probed
    unchecked: list[str] = field(default_factory=list)

    @property
    def persistence(self) -> str:
        if self.aof:
            return "append-only file"
        if self.rdb_saves:
            return f"snapshots only (save {self.rdb_saves})"
        if self.aof is False and self.rdb_saves == "":
            return "none"
        return "unknown"

    def errors(self) -> list[str]:
        """Settings under which the bridge must not run: accepted events would vanish."""
        if self.policy is None or self.policy == "noeviction":
            return []
        return [
            f"Redis evicts keys when it is full (maxmemory-policy {self.policy}): it would silently drop "
            f"accepted events, their duplicate marks and queued jobs; {FIX_EVICTION}"
        ]

    def warnings(self) -> list[str]:
        """Risks an owner must know about, and what could not be checked."""
        found = []
        if self.persistence == "none":
            found.append(
                "Redis keeps nothing on disk (appendonly no, and no RDB save points): a restart of Redis "
                f"loses every queued event, scheduled retry and duplicate mark; {FIX_PERSISTENCE}"
            )
        return found + [f"could not check {what}" for what in self.unchecked]

    def full(self) -> str | None:
        """Why a webhook would be answered 503 now, or None."""
        if self.refused_write is None:
            return None
        if "OOM" in self.refused_write or "maxmemory" in self.refused_write:
            used = f" ({_mb(self.used_memory)} used of maxmemory {_mb(self.maxmemory)})" if self.maxmemory else ""
            return (
                f"Redis is full{used} and refuses writes: every webhook is answered 503 (the platform delivers "
                "again later) until memory is freed or maxmemory is raised (`CONFIG SET maxmemory ...`)"
            )
        return f"Redis refuses writes ({self.refused_write}): every webhook is answered 503"

    def details(self) -> dict[str, Any]:
        return {
            "redis_eviction_policy": self.policy,
            "redis_persistence": self.persistence,
            "redis_writable": self.refused_write is None,
        }


def _mb(size: int | None) -> str:
    return "?" if size is None else f"{size / 1_048_576:.1f} MB"


def inspect(redis: Redis, probe: bool = True, mark_start: bool = False) -> RedisHealth:
    """One round trip: INFO memory and persistence, CONFIG GET save, a tiny write (`probe`), and
    the data-start mark (`mark_start`). Raises RedisError only when Redis does not answer at all."""
    pipe = redis.pipeline(transaction=False)
    pipe.info("memory")
    pipe.info("persistence")
    pipe.config_get("save")
    if probe:
        pipe.set(PROBE_KEY, b"1", px=5000)
    if mark_start:
        mark_data_start(pipe)
    memory, persistence, save, *writes = pipe.execute(raise_on_error=False)
    health = RedisHealth()
    if isinstance(memory, dict):
        health.policy = str(memory.get("maxmemory_policy")) if "maxmemory_policy" in memory else None
        health.used_memory, health.maxmemory = memory.get("used_memory"), memory.get("maxmemory")
    if health.policy is None:
        health.unchecked.append(f"the eviction policy ({_refusal(memory)}): make sure maxmemory-policy is noeviction")
    if isinstance(persistence, dict) and "aof_enabled" in persistence:
        health.aof = bool(int(persistence["aof_enabled"]))
    if isinstance(save, dict):
        health.rdb_saves = text(next(iter(save.values()), "")).strip()
    if health.aof is None or (health.aof is False and health.rdb_saves is None):
        reason = _refusal(save if isinstance(persistence, dict) else persistence)
        health.unchecked.append(f"persistence ({reason}): make sure the append-only file is on")
    if probe and isinstance(writes[0], Exception):
        if not isinstance(writes[0], ResponseError):
            raise writes[0]
        health.refused_write = str(writes[0])
    return health


def mark_data_start(redis: Redis | Pipeline) -> None:
    """Note when this Redis's data began, unless it is noted already (bridge processes at start)."""
    redis.set(DATA_SINCE_KEY, f"{time.time():.3f}", nx=True)


def _refusal(answer: Any) -> str:
    if isinstance(answer, Exception):
        return f"Redis refused: {answer}"
    return "Redis did not say"


def check_at_start(redis: Redis, log: logging.Logger) -> RedisHealth | None:
    """At the start of a process: refuse an evicting Redis, warn loudly about one without
    persistence or full now, and write the data-start mark. An unreachable Redis is only logged:
    the process waits for it, and /readyz checks again. Skipped in the processes of `up`: it checked."""
    if os.environ.get(CHECKED_ENV):
        return None
    try:
        health = inspect(redis, probe=True, mark_start=True)
    except RedisError as exc:
        log.warning("could not check Redis at start (%s: %s); /readyz checks it again", type(exc).__name__, exc)
        return None
    errors = health.errors()
    if errors:
        raise RedisUnfit("; ".join(errors))
    for warning in health.warnings() + [health.full() or ""]:
        if warning:
            log.warning("WARNING: %s", warning)
    return health


def data_loss_note(redis: Redis, received_at: float) -> str:
    """For a message about data an earlier event should have brought: what Redis lost, if it did.
    Empty when the data-start mark predates the event (nothing says memory was lost)."""
    try:
        raw = redis.get(DATA_SINCE_KEY)
    except RedisError:
        return ""
    if raw is None:
        return (
            "; Redis has lost the bridge's data since it started (the mark written at start is gone: Redis "
            "restarted empty or evicted keys), so the earlier event may have been received and lost with it"
        )
    since = float(text(raw))
    if since <= received_at:
        return ""
    when = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"; Redis lost the bridge's memory at {when}, after this event was received (it restarted empty or "
        "evicted keys), so the earlier event may have been received and lost with it"
    )
