"""`worker`: an RQ worker on the bridge's queue, with the scheduler that runs delayed retries."""

from __future__ import annotations

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bridge import runtime
from bridge.runtime import Runtime
from mappings.config import BridgeConfig

# In-process jobs: connectors (HTTP sessions, API clients) live as long as the worker, and a job
# needs no fork. Each job still has RQ's time limit; a killed worker's job is re-queued by RQ.
WORKER_CLASS = SimpleWorker


def run_worker(config: BridgeConfig, burst: bool = False, dry_run: bool = False, name: str | None = None) -> int:
    rt = Runtime.from_config(config, dry_run=dry_run)
    runtime.install(rt)
    try:
        worker = WORKER_CLASS(
            [rt.queue], connection=rt.redis, serializer=JSONSerializer, name=name, maintenance_interval=60
        )
        worker.work(burst=burst, with_scheduler=True)
    finally:
        runtime.install(None)
        rt.close()
    return 0
