"""Redis connection and the RQ queue that carries the work (JSON serializer, never pickle)."""

from __future__ import annotations

from redis import Redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

QUEUE_NAME = "salon-bridge"
JOB_TIMEOUT = 120  # seconds; each connector's own network timeouts are well below this
# A job that crashes or whose worker is killed runs again (actions already done are skipped).
CRASH_RETRY = Retry(max=3, interval=[10, 60, 300])
FAILURE_TTL = 30 * 86400


def connect(url: str) -> Redis:
    """A connection for RQ and the event log (bytes in, bytes out)."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


def work_queue(redis: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer, default_timeout=JOB_TIMEOUT)
