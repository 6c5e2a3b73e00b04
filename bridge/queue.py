"""Redis connection, the RQ queue that carries the work (JSON serializer, never pickle), and the
one way the bridge puts its jobs on it."""

from __future__ import annotations

import math
import os
import time
import zlib
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
# A finished job is deleted at once: its outcome is in the event log, and RQ's result stream
# (4.8 KB a job, kept for result_ttl) was the largest thing in Redis after a burst.
RESULT_TTL = 0
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


_SENTINEL = "sb-job-record-sentinel"


class JobRecord:
    """The hash RQ's `enqueue` writes for one of the bridge's jobs whose one argument is its id,
    made without RQ building and serialising a Job for each webhook (that was a third of ingest's
    CPU), for a Redis script to write.

    RQ's own fields are recorded once, from an enqueue of a sentinel with every option `enqueue`
    sets; per job the script splices in the id and the time. `data` is RQ's JSON without zlib
    (RQ reads both). Empty fields are left out: RQ reads a missing field as empty."""

    def __init__(self, queue: Queue, job: str):
        recorder = queue.connection.pipeline(transaction=True)
        recorder.multi()
        enqueue(queue, job, _SENTINEL, job_id=_SENTINEL, pipeline=recorder)
        encode = recorder.connection_pool.get_encoder().encode  # what redis-py would send
        fields: dict[str, bytes] = {}
        for args, _ in recorder.command_stack:
            if args[0] == "HSET":
                fields.update({str(k): encode(v) for k, v in zip(args[2::2], args[3::2], strict=True)})
        recorder.reset()
        fields["data"] = zlib.decompress(fields["data"])
        del fields["created_at"], fields["enqueued_at"]  # the script's time
        self.fields = {name: value.decode().split(_SENTINEL) for name, value in fields.items() if value}
        self.queue_key = queue.key
        self.queues_key = queue.redis_queues_keys

    def lua_fields(self, id_expr: str) -> str:
        """The job's fields but the times, as the Lua arguments of an HSET: literals, with the Lua
        expression `id_expr` where RQ wrote the job's id (only [A-Za-z0-9_-] ids: see `event_key`)."""
        parts = []
        for name, pieces in self.fields.items():
            value = f" .. {id_expr} .. ".join(lua_string(piece) for piece in pieces)
            parts.append(f"{lua_string(name)}, {value}")
        return ", ".join(parts)

    @staticmethod
    def key(job_id: str) -> str:
        return str(Job.key_for(job_id))

    _second: tuple[int, str] = (0, "")

    @classmethod
    def moment(cls, now: float) -> str:
        """`now` as RQ writes created_at and enqueued_at (rq.utils.utcformat): the date and time
        are formatted once a second (strftime was a tenth of a webhook's CPU)."""
        second, text = cls._second
        if int(now) != second:
            second, text = int(now), time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now)))
            cls._second = (second, text)
        return f"{text}.{min(999_999, round((now - second) * 1_000_000)):06d}Z"


def lua_string(text: str) -> str:
    """A Lua string literal of `text`: quotes, backslashes and bytes outside printable ASCII escaped."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}" for b in text.encode()) + '"'
