"""`worker`: an RQ worker on the bridge's queue, with the scheduler that runs delayed retries."""

from __future__ import annotations

import logging
import time

from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now

from bridge import runtime
from bridge.runtime import Runtime
from mappings.config import BridgeConfig

HEARTBEAT_EVERY = 10.0  # seconds; the worker key lives worker_ttl + 60 s (135 s here)


class BridgeWorker(SimpleWorker):
    """RQ's in-process worker (measured 7x the forking one, docs/performance.md): connectors (HTTP
    sessions, API clients) live as long as the worker and a job needs no fork. Each job keeps
    RQ's time limit; a killed worker's job is re-queued by RQ.

    RQ's own round trips per job go from 20 to 9 (bench/round_trips.py): the bare heartbeat
    (three round trips, about three times a job) goes at most every HEARTBEAT_EVERY seconds, in
    one round trip; the worker's state is not written again when it has not changed (RQ writes
    `idle` twice between jobs); and the job's `last_heartbeat` is not written once more after the
    job returned. The per-job heartbeats RQ sends with the job's own time limit are untouched."""

    log_result_lifespan = False  # "result is kept for 600 seconds" after every job says nothing to an owner
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

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline=pipeline)

    def clean_registries(self) -> None:
        """RQ's periodic maintenance, and the bridge's: the event and dead-letter indexes forget
        what is older than their retention (the records expire by themselves)."""
        super().clean_registries()
        runtime.current().store.trim()

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ also sets the job's last_heartbeat here, for callbacks that run after the job; the
        # bridge has none, and the job's result and end time are written next.
        job.ended_at = now()


class PerJobLinesAtDebug(logging.Filter):
    """RQ's INFO lines for every job (dequeued, completed, "Job OK"; rq 3.0) shown only at debug
    level: the bridge's own `action ...` line says what happened, and each line costs the
    masking formatter. RQ's other lines (start, stop, maintenance) and its warnings stay."""

    PER_JOB = frozenset(
        {
            "Worker %s: %s: %s (%s)",
            "Worker %s: %s: %s",
            "Successfully completed %s job in %ss on worker %s",
            "Successfully completed job %s in %ss on worker %s",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.msg in self.PER_JOB:
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


PER_JOB_LINES_AT_DEBUG = PerJobLinesAtDebug()
WORKER_CLASS = BridgeWorker


def run_worker(config: BridgeConfig, burst: bool = False, dry_run: bool = False, name: str | None = None) -> int:
    rt = Runtime.from_config(config, dry_run=dry_run)
    runtime.install(rt)
    logging.getLogger("rq.worker").addFilter(PER_JOB_LINES_AT_DEBUG)  # once: the same filter is not added twice
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
