"""Redis connection, the RQ queue that carries the work (JSON serializer, never pickle), and the
one way the bridge puts its jobs on it."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from rq import Callback, Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

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
# Records the outcome of a job RQ gives up on (crashed or killed on its last try), so no event is
# left without one.
_GAVE_UP = Callback("bridge.jobs.job_gave_up")


def connect(url: str) -> Redis:
    """A connection for RQ and the event log (bytes in, bytes out)."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


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
