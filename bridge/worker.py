"""`worker`: an RQ worker on the bridge's queue, with the scheduler that runs delayed retries."""

from __future__ import annotations

import time

from redis.client import Pipeline
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bridge import runtime
from bridge.runtime import Runtime
from mappings.config import BridgeConfig

HEARTBEAT_EVERY = 10.0  # seconds; the worker key lives worker_ttl + 60 s (135 s here)


class BridgeWorker(SimpleWorker):
    """RQ's in-process worker (measured 7x the forking one, docs/performance.md): connectors (HTTP
    sessions, API clients) live as long as the worker and a job needs no fork. Each job keeps
    RQ's time limit; a killed worker's job is re-queued by RQ.

    Its bare heartbeat (three round trips, about three times a job) goes at most every
    HEARTBEAT_EVERY seconds, in one round trip; the per-job heartbeats RQ sends are untouched."""

    _last_bare_heartbeat = 0.0

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None or timeout is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        if time.monotonic() - self._last_bare_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_bare_heartbeat = time.monotonic()
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(None, pipeline=pipe)
            pipe.execute()


WORKER_CLASS = BridgeWorker


def run_worker(config: BridgeConfig, burst: bool = False, dry_run: bool = False, name: str | None = None) -> int:
    rt = Runtime.from_config(config, dry_run=dry_run)
    runtime.install(rt)
    try:
        worker = WORKER_CLASS(
            [rt.queue],
            connection=rt.redis,
            serializer=JSONSerializer,
            name=name,
            maintenance_interval=60,
            # An idle worker wakes every worker_ttl - 15 s for maintenance (re-queueing a killed
            # worker's job, restarting the retry scheduler): RQ's 420 s default is too slow.
            worker_ttl=75,
        )
        worker.work(burst=burst, with_scheduler=True)
    finally:
        runtime.install(None)
        rt.close()
    return 0
