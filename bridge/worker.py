"""`worker`: an RQ worker on the bridge's queue, with the scheduler that runs delayed retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError, OutOfMemoryError, RedisError, TimeoutError
from rq import Queue, SimpleWorker, worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.utils import now

from bridge import digest, jobs, redis_health, reload, runtime, schedules
from bridge.runtime import Runtime
from mappings.config import BridgeConfig

HEARTBEAT_EVERY = 10.0  # seconds; the worker key lives worker_ttl + 60 s (85 s here)
SCHEDULER_LEASE = 10  # seconds the scheduler's lock outlives its last renewal (every second)
SCHEDULER_LOOK_EVERY = 5.0  # seconds between a worker's looks for a scheduler to take over
SUSPENSION_LOOK_EVERY = 1.0  # seconds between looks for `rq suspend` (RQ looks before every job)
REDIS_LOG_EVERY = 60.0  # while Redis is unreachable or full, a worker says so once a minute
MAX_BACKOFF = 30.0  # seconds between tries while Redis is in trouble

log = logging.getLogger("salon_bridge.worker")


class RedisTrouble:
    """A worker's patience with Redis: back off while it is unreachable or refuses writes (full),
    say so once per REDIS_LOG_EVERY, and say when it answers again."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.delay = 1.0
        self.said_at = -REDIS_LOG_EVERY

    def wait(self, doing: str, exc: RedisError) -> None:
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        if now - self.said_at >= REDIS_LOG_EVERY:
            self.said_at = now
            log.warning(
                "worker: Redis %s (%s: %s) while %s; the worker waits and tries again "
                "(this line repeats once a minute while it lasts; /readyz says more)",
                _what_is_wrong(exc),
                type(exc).__name__,
                exc,
                doing,
            )
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, MAX_BACKOFF)

    def over(self) -> None:
        if self.since is not None:
            log.warning("worker: Redis answers again after %.0f s; working again", time.monotonic() - self.since)
            self.since, self.delay, self.said_at = None, 1.0, -REDIS_LOG_EVERY


def _what_is_wrong(exc: RedisError) -> str:
    if isinstance(exc, OutOfMemoryError):
        return "is full and refuses writes (maxmemory reached: free memory or raise maxmemory)"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "does not answer"
    return "refused a command"


class PlanScheduler(RQScheduler):
    """RQ's scheduler (one per queue, under RQ's lock, in a process beside a worker), which also
    queues the scheduled sends whose time has come (bridge.schedules), every second.

    RQ leases its lock for 61 s, renewed every second: when the worker running the scheduler is
    killed, nothing is queued on time until the lease runs out and another worker looks (a chaos
    run saw 64-100 s). Here the lease is SCHEDULER_LEASE, and workers look every
    SCHEDULER_LOOK_EVERY (BridgeWorker.heartbeat)."""

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        acquired: set[str] = super().acquire_locks(auto_start)
        self._shorten_leases()
        return acquired

    def heartbeat(self) -> None:
        super().heartbeat()
        self._shorten_leases()

    def _shorten_leases(self) -> None:
        if self._acquired_locks:
            with self.connection.pipeline(transaction=False) as pipe:
                for name in self._acquired_locks:
                    pipe.expire(self.get_locking_key(name), SCHEDULER_LEASE)
                pipe.execute()

    def enqueue_scheduled_jobs(self) -> None:
        super().enqueue_scheduled_jobs()
        if self._acquired_locks:
            schedules.wake_due_plans(self.connection)


class BridgeWorker(SimpleWorker):
    """RQ's in-process worker (measured 7x the forking one, docs/performance.md): connectors (HTTP
    sessions, API clients) live as long as the worker and a job needs no fork. Each job keeps
    RQ's time limit; a killed worker's job is re-queued by RQ.

    RQ's own round trips per job go from 27 to 6 (bench/round_trips.py, jobs that keep no
    result): the bare heartbeat (three round trips, about three times a job) goes at most every
    HEARTBEAT_EVERY seconds, in one round trip; the worker's state is not written again when it
    has not changed (RQ writes `idle` twice between jobs); the job's `last_heartbeat` is not
    written once more after the job returned; `rq suspend` is looked for once a second; and a
    job's success is one MULTI (handle_job_success). The per-job heartbeats RQ sends with the
    job's own time limit are untouched.

    Redis errors do not end it (RQ 3.0 quits on any error outside a job, an OutOfMemoryError of a
    full Redis included): each step of RQ's loop waits for Redis and tries again (RedisTrouble).
    A job interrupted that way is left to RQ's recovery, as a killed worker's is. And when its
    registration is gone (Redis restarted empty), the next heartbeat registers the worker again."""

    log_result_lifespan = False  # "result is kept for 600 seconds" after every job says nothing to an owner
    _last_bare_heartbeat = 0.0
    _last_scheduler_look = 0.0
    _last_suspension_look = -SUSPENSION_LOOK_EVERY
    _born = False
    _trouble: RedisTrouble | None = None
    config_source: reload.ConfigSource | None = None  # set by run_worker: a changed config is taken on between jobs

    def _set_connection(self, connection: Redis) -> Redis:
        """RQ raises the socket timeout above its blocking wait for a job, but only for connections
        opened after that: one already in the pool kept 5 s, and every idle wait ended in a
        "could not connect to Redis" error and a back-off. Reopen them with the new timeout."""
        connection = super()._set_connection(connection)
        connection.connection_pool.disconnect()
        connection.connection_pool.reset()  # the pool's connections keep their timeout when reopened
        return connection

    @property
    def trouble(self) -> RedisTrouble:
        if self._trouble is None:
            self._trouble = RedisTrouble()
        return self._trouble

    def _until_redis_answers(self, doing: str, step: Callable[..., Any], *args: Any) -> Any:
        """Run one step of RQ's loop, waiting out Redis errors; None when a stop was requested."""
        while True:
            try:
                result = step(*args)
            except RedisError as exc:
                self._last_bare_heartbeat = 0.0  # the next heartbeat checks the registration
                if self._stop_requested:
                    return None
                self.trouble.wait(doing, exc)
                continue
            self.trouble.over()
            return result

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        self._until_redis_answers("starting", super().bootstrap, *args, **kwargs)

    def register_birth(self) -> None:
        if not self._born:  # bootstrap may be tried again: register once
            super().register_birth()
            self._born = True

    def subscribe(self) -> None:
        if self.pubsub_thread is None:
            super().subscribe()

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's own (rq/worker/base.py), with the PlanScheduler in place of RQScheduler."""
        try:
            self.scheduler = PlanScheduler(
                self.queues,
                connection=self.connection,
                logging_level=logging_level if logging_level is not None else self.log.level,
                date_format=date_format,
                log_format=log_format,
                serializer=self.serializer,
            )
            self.scheduler.acquire_locks()
            if not self.scheduler.acquired_locks:
                return
            if not burst:
                self.scheduler.start()
                return
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        except RedisError as exc:
            # RQ's maintenance starts it later (every maintenance_interval) when it is not running.
            log.warning(
                "worker: the retry scheduler could not start now (%s: %s); tried again later", type(exc).__name__, exc
            )

    def check_for_suspension(self, burst: bool) -> None:
        """`rq suspend` is taken on within SUSPENSION_LOOK_EVERY rather than before the very next
        job: one round trip less per job (RQ's EXISTS rq:suspended)."""
        if time.monotonic() - self._last_suspension_look < SUSPENSION_LOOK_EVERY:
            return
        self._until_redis_answers("checking for a suspension", super().check_for_suspension, burst)
        self._last_suspension_look = time.monotonic()

    def run_maintenance_tasks(self) -> None:
        self._until_redis_answers("running maintenance", super().run_maintenance_tasks)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        found = self._until_redis_answers(
            "waiting for a job", super().dequeue_job_and_maintain_ttl, timeout, max_idle_time
        )
        self.switch_config()  # between two jobs: the one just dequeued runs entirely on the new config
        return found

    def _take_over_scheduler(self) -> None:
        """Start the scheduler here if its lock is free (RQ itself looks only at maintenance)."""
        scheduler = self.scheduler
        if scheduler is None or time.monotonic() - self._last_scheduler_look < SCHEDULER_LOOK_EVERY:
            return
        self._last_scheduler_look = time.monotonic()
        if scheduler._process is not None and scheduler._process.is_alive():
            return
        try:
            scheduler.acquire_locks(auto_start=True)
        except RedisError:
            pass  # Redis is away: the next look tries again

    def switch_config(self) -> None:
        """The one place a worker takes on a changed config (bridge.reload), never during a job."""
        if self.config_source is None:
            return
        taken = self.config_source.take()
        if taken is None:
            return
        config, version = taken
        rt = runtime.current()
        old = rt.version
        rt.switch_config(config, version)
        _replan(rt)
        log.warning("worker %s: switched to config version %s (was %s)", self.name, version, old)
        self.report_config()

    def report_config(self) -> None:
        if self.config_source is not None:
            reload.report(self.connection, reload.report_of(self.config_source, "worker", self.name))

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except RedisError as exc:
            # Its outcome could not be recorded: RQ's maintenance finds it in the started-job
            # registry after its deadline and runs it again, as for a killed worker (the ledger
            # keeps done actions done).
            self._last_bare_heartbeat = 0.0
            self.trouble.wait(f"recording job {job.id} (it runs again by itself later)", exc)

    def teardown(self) -> None:
        try:
            super().teardown()
        except RedisError as exc:
            log.warning("worker: could not record its stop in Redis (%s); its registration expires by itself", exc)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None or timeout is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        self._take_over_scheduler()  # the bare heartbeat comes before every wait for a job
        if time.monotonic() - self._last_bare_heartbeat < HEARTBEAT_EVERY:
            return
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                super().heartbeat(None, pipeline=pipe)
                worker_registration.register(self, pipe)  # SADDs: back on the workers' lists if lost
                answers = pipe.execute()
            # A new hash field, or a new member of a list: Redis had lost the registration (a job's
            # own heartbeat may have written the hash again first, with only a few of its fields).
            if answers[0] or any(answers[3:]):
                self._register_again()
        except RedisError:
            self._last_bare_heartbeat = 0.0  # what needs Redis next says why (and waits)
            return
        self._last_bare_heartbeat = time.monotonic()

    def _register_again(self) -> None:
        """Redis lost the worker's registration (it restarted empty, or evicted it): write it again,
        or /readyz would say that no worker is alive while this one works."""
        log.warning("worker %s: its registration was gone from Redis (Redis lost data); registered again", self.name)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline=pipeline)

    def clean_registries(self) -> None:
        """RQ's periodic maintenance, and the bridge's: the event and dead-letter indexes forget
        what is older than their retention (the records expire by themselves)."""
        super().clean_registries()
        rt = runtime.current()
        rt.store.trim()
        schedules.trim(rt.redis, rt.store.retention)

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        """RQ's outcome of a successful job, written as one MULTI of what it knows. RQ 3.0 first
        WATCHes and reads the job's dependents (two round trips), then, deleting a job that keeps
        no result, reads its status and twice lists and fetches its executions (seven more) to
        find the one execution this worker has in hand. No job waits on the bridge's (nothing
        enqueued on its queue uses `depends_on`), they keep no result (RESULT_TTL 0), and they have
        no group, rate limit or repeat; a job that has any of these goes through RQ's own."""
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl != 0 or job.repeats_left or job.group_id or job.has_rate_limit:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        assert job.started_at is not None and job.ended_at is not None
        with self.connection.pipeline() as pipe:
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            # The execution, its entries in the started registry and the job's execution registry:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            # ...and what RQ's Job.delete removes besides (for a job that keeps no result):
            pipe.delete(job.key, job.dependents_key, job.dependencies_key, Result.get_key(job.id))
            pipe.delete(job.execution_registry.key)
            pipe.execute()
        job._status = JobStatus.FINISHED
        time_taken = job.ended_at - job.started_at  # RQ's line, shown at debug only (PerJobLinesAtDebug)
        self.log.info("Successfully completed job %s in %ss on worker %s", job.id, time_taken, self.name)

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


def _replan(rt: Runtime) -> None:
    """Scheduled sends follow a changed config (bridge.jobs.replan_all) and daily mappings have
    their plans (bridge.digest); Redis away: the next start does it."""
    try:
        jobs.replan_all(rt)
        digest.plan_digests(rt)
    except RedisError as exc:
        log.warning("worker: scheduled sends could not follow the config now (%s: %s)", type(exc).__name__, exc)


PER_JOB_LINES_AT_DEBUG = PerJobLinesAtDebug()
WORKER_CLASS = BridgeWorker


def run_worker(
    config: BridgeConfig,
    burst: bool = False,
    dry_run: bool = False,
    name: str | None = None,
    watch: bool = False,
    source: reload.ConfigSource | None = None,
) -> int:
    """Work the queue. `source`: where a changed config comes from (on SIGHUP, and with `watch`
    whenever the file changes); without one the config never changes."""
    rt = Runtime.from_config(config, dry_run=dry_run)
    if source is not None:
        rt.version = source.version
    redis_health.check_at_start(rt.redis, log)
    runtime.install(rt)
    logging.getLogger("rq.worker").addFilter(PER_JOB_LINES_AT_DEBUG)  # once: the same filter is not added twice
    try:
        worker = WORKER_CLASS(
            [rt.queue],
            connection=rt.redis,
            serializer=JSONSerializer,
            name=name,
            maintenance_interval=60,
            # An idle worker wakes every worker_ttl - 15 s (to re-queue a killed worker's job, take
            # over the scheduler): RQ's 420 s default is far too slow for scheduled sends.
            worker_ttl=25,
        )
        if source is not None:
            worker.config_source = source
            source.on_report = worker.report_config
            source.install_sighup()
            source.start(watch)
        try:
            _replan(rt)
            worker.work(burst=burst, with_scheduler=True)
        finally:
            if source is not None:
                source.stop()
                reload.forget(rt.redis, reload.report_of(source, "worker", worker.name))
    finally:
        runtime.install(None)
        rt.close()
    return 0
