"""Redis connection, the RQ queue that carries the work (JSON serializer, never pickle), and the
one way the bridge puts its jobs on it."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from redis import Redis
from redis.client import Pipeline
from rq import Callback, Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

if TYPE_CHECKING:
    from mappings.config import BridgeConfig

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUE_NAME = "salon-bridge"
# Seconds; a connector call keeps the entity lock for as long as it takes, but not past this.
JOB_TIMEOUT = 120
# A job that crashes or whose worker is killed runs again (actions already done are skipped).
CRASH_RETRY = Retry(max=3, interval=[10, 60, 300])
RESULT_TTL = 600
FAILURE_TTL = 30 * 86400

# Jobs by dotted path: the web process enqueues them without importing the worker tier.
PROCESS_EVENT = "bridge.jobs.process_event"
RUN_ACTION = "bridge.jobs.run_action"
PROCESS_CALLBACK = "bridge.jobs.process_callback"  # a WhatsApp or Twilio callback (bridge/callbacks.py)
# Records the outcome of a job RQ gives up on (crashed or killed on its last try), so no event is
# left without one.
_GAVE_UP = Callback("bridge.jobs.job_gave_up")


def connect(url: str) -> Redis:
    """A connection for RQ and the event log (bytes in, bytes out)."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


def resolve_redis_url(config: BridgeConfig) -> str:
    """`redis_url` from the config, else $REDIS_URL, else the Redis `salon-bridge up` embeds in
    ./var (or $SALON_BRIDGE_DATA_DIR) when it is running or has left its data there, else a local Redis."""
    configured = configured_redis_url(config)
    if configured:
        return configured
    socket = data_dir() / "redis.sock"
    if socket.exists() or embedded_data(config) is not None:
        return f"unix://{socket.resolve()}?db=0"
    return DEFAULT_REDIS_URL


def configured_redis_url(config: BridgeConfig) -> str | None:
    """`redis_url` from the config, else $REDIS_URL; None when neither is set."""
    return config.model.redis_url or os.environ.get("REDIS_URL") or None


def data_dir() -> Path:
    """Where `up` keeps its embedded Redis and the dry run's webhook secret."""
    return Path(os.environ.get("SALON_BRIDGE_DATA_DIR", "var"))


def embedded_data(config: BridgeConfig) -> Path | None:
    """`up`'s data folder, when no other Redis is configured and its embedded Redis left data there."""
    if configured_redis_url(config):
        return None
    folder = data_dir()
    return folder if (folder / "appendonlydir").is_dir() or (folder / "appendonly.aof").is_file() else None


def work_queue(redis: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer, default_timeout=JOB_TIMEOUT)


def enqueue(
    queue: Queue,
    job: str,
    *args: str,
    job_id: str | None = None,
    delay: float | None = None,
    pipeline: Pipeline | None = None,
) -> Job:
    """Put one of the bridge's jobs on the queue with its RQ options, now or after `delay` seconds."""
    options = {
        "job_id": job_id,
        "retry": CRASH_RETRY,
        "result_ttl": RESULT_TTL,
        "failure_ttl": FAILURE_TTL,
        "on_failure": _GAVE_UP,
        "pipeline": pipeline,
    }
    if delay is None:
        return queue.enqueue_call(job, args=list(args), **options)  # type: ignore[arg-type]
    return queue.enqueue_at(due_at(delay), job, *args, **options)


def due_at(delay: float, now: float | None = None) -> datetime:
    """When a job delayed by `delay` seconds may run. RQ's scheduler keeps whole seconds and runs a
    job once the current second reaches it, so the time is rounded up: never early."""
    now = time.time() if now is None else now
    return datetime.fromtimestamp(math.ceil(now + delay), UTC)
