"""`salon-bridge worker` as a real process on a private Redis that fills up, goes away, or
restarts empty: it waits, says so once a minute, registers again, and carries on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from bridge.queue import QUEUE_NAME
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow
StartRedis = Callable[..., RedisServer]


class WorkerProcess:
    def __init__(self, config: Path, redis_url: str, log: Path, *flags: str):
        env = {**os.environ, "REDIS_URL": redis_url, "SALON_BRIDGE_CONFIG": str(config)}
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "worker", "--config", str(config), *flags],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Path, str], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(config: Path, redis_url: str) -> WorkerProcess:
        worker = WorkerProcess(config, redis_url, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_a_worker_waits_for_a_full_redis_and_then_works(
    private_redis: StartRedis,
    write_config: Callable[[str], Path],
    destination: CapturingServer,
    start_worker: Callable[[Path, str], WorkerProcess],
) -> None:
    server = private_redis(maxmemory="4mb", appendonly="yes")
    config = write_config(http_config(destination.url))
    bridge = Bridge(config, server.url)
    try:
        ids = [bridge.post(sample(t)).get_json()["event_id"] for t in ("booking.created", "order.created")]
        server.fill()  # RQ's first write (its registration) is refused: RQ 3.0 alone would exit
        worker = start_worker(config, server.url)
        _wait_for(lambda: "is full and refuses writes" in worker.output())
        time.sleep(2)
        assert worker.process.poll() is None, worker.output()
        assert destination.requests == []
        server.free()
        _wait_for(lambda: len(destination.requests) == 2)
        assert sorted(r.json()["id"] for r in destination.requests) == sorted(ids)
        assert "Redis answers again after" in worker.output()
        assert worker.output().count("is full and refuses writes") == 1  # once a minute, not at every try
    finally:
        bridge.close()


def test_a_worker_registers_again_after_redis_restarted_empty(
    private_redis: StartRedis,
    write_config: Callable[[str], Path],
    destination: CapturingServer,
    start_worker: Callable[[Path, str], WorkerProcess],
) -> None:
    server = private_redis()
    config = write_config(http_config(destination.url))
    worker = start_worker(config, server.url)

    def registered() -> bool:
        with server.client() as client:
            return bool(client.scard(WORKERS_BY_QUEUE_KEY % QUEUE_NAME))

    _wait_for(registered)
    time.sleep(11)  # past the heartbeat throttle (HEARTBEAT_EVERY), as a worker that has run a while
    server.restart_empty()
    _wait_for(registered, timeout=40)
    assert worker.process.poll() is None, worker.output()
    assert "its registration was gone from Redis" in worker.output()
    bridge = Bridge(config, server.url)
    try:
        body = bridge.client.get("/readyz").get_json()
        assert body["workers"] == 1, body
        bridge.post(sample("booking.created"))
        _wait_for(lambda: len(destination.requests) == 1)
    finally:
        bridge.close()


def test_a_heartbeat_writes_the_whole_registration_again_when_only_part_came_back(
    private_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    from rq.serializers import JSONSerializer

    from bridge.queue import work_queue
    from bridge.worker import BridgeWorker

    server = private_redis()
    with server.client() as redis:
        worker = BridgeWorker([work_queue(redis)], connection=redis, serializer=JSONSerializer, worker_ttl=75)
        worker.register_birth()
        redis.flushall()  # Redis restarted empty...
        redis.hset(worker.key, "last_heartbeat", "x")  # ...and a job's own heartbeat wrote one field back
        worker.heartbeat()
        assert redis.sismember(WORKERS_BY_QUEUE_KEY % QUEUE_NAME, worker.key)
        assert {b"birth", b"queues", b"pid", b"state"} <= set(redis.hkeys(worker.key))
        assert 0 < redis.ttl(worker.key) <= 135
    assert "its registration was gone from Redis" in caplog.text


def test_another_worker_takes_over_the_scheduler_soon_after_its_worker_is_killed(
    private_redis: StartRedis, write_config: Callable[[str], Path], destination: CapturingServer
) -> None:
    """RQ leases the scheduler's lock for 61 s and looks for a free one only at maintenance: a
    killed worker's scheduled sends waited 64-100 s. The lease is 10 s here and workers look every 5 s."""
    import signal

    from rq.scheduler import RQScheduler

    from bridge.worker import SCHEDULER_LEASE
    from tests.test_jobs import _worker_process

    server = private_redis()
    config = write_config(http_config(destination.url))
    workers = [_worker_process(config, server.url) for _ in range(2)]
    lock = RQScheduler.get_locking_key(QUEUE_NAME)
    try:
        with server.client() as client:

            def holder() -> str | None:
                name = client.get(lock)
                return name.decode() if name else None

            def group_of(scheduler: str | None) -> int | None:
                """The worker (process group) whose forked scheduler process this is, once it runs."""
                pid = client.hget(f"rq:scheduler:{scheduler}", "pid")
                return os.getpgid(int(pid)) if pid else None

            _wait_for(lambda: group_of(holder()) is not None)
            first = holder()
            assert 0 < client.ttl(lock) <= SCHEDULER_LEASE
            killed = next(w for w in workers if w.pid == group_of(first))
            os.killpg(killed.pid, signal.SIGKILL)  # the worker and its scheduler, as a crash would
            killed.wait()
            _wait_for(lambda: holder() not in (None, first), timeout=SCHEDULER_LEASE + 20)
            survivor = next(w for w in workers if w is not killed)
            _wait_for(lambda: group_of(holder()) == survivor.pid)
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate()


def test_a_worker_waits_for_a_job_longer_than_the_usual_socket_timeout(redis_url: str) -> None:
    """RQ raises the socket timeout above its wait for a job (dequeue_timeout); a connection the
    runtime had already opened kept 5 s, and every idle wait ended in "could not connect"."""
    from rq.serializers import JSONSerializer

    from bridge.queue import connect, work_queue
    from bridge.worker import BridgeWorker

    redis = connect(redis_url)
    try:
        redis.ping()  # opened before the worker, as the runtime's checks do
        worker = BridgeWorker([work_queue(redis)], connection=redis, serializer=JSONSerializer, worker_ttl=25)
        assert worker.dequeue_timeout > 5
        assert redis.blmove("sb:test:nothing", "sb:test:nowhere", 6) is None  # waited 6 s, no TimeoutError
    finally:
        redis.close()


def test_a_job_the_worker_finished_leaves_nothing_behind_and_counts_once(
    redis_url: str, write_config: Callable[[str], Path], destination: CapturingServer
) -> None:
    """The success of a job is one MULTI (BridgeWorker.handle_job_success, without RQ's dependents
    check): the job is deleted, its execution and registry entry are gone, the worker counts it."""
    from rq.serializers import JSONSerializer

    from bridge.worker import BridgeWorker

    bridge = Bridge(write_config(http_config(destination.url)), redis_url)
    try:
        for event_type in ("booking.created", "order.created"):
            assert bridge.post(sample(event_type)).status_code == 202
        queue = bridge.runtime.queue
        worker = BridgeWorker([queue], connection=bridge.redis, serializer=JSONSerializer)
        worker.work(burst=True)
        assert len(destination.requests) == 2
        assert bridge.redis.keys("rq:job:*") == []
        assert bridge.redis.keys("*execution*") == []  # the executions, their registries, the worker's set
        assert queue.started_job_registry.count == 0 and queue.failed_job_registry.count == 0
        counts = bridge.redis.hmget(worker.key, "successful_job_count", "failed_job_count", "total_working_time")
        assert counts[0] == b"2" and counts[1] is None
        assert float(counts[2] or 0) > 0
    finally:
        bridge.close()


def test_a_suspended_worker_takes_no_job_until_resumed(
    private_redis: StartRedis,
    write_config: Callable[[str], Path],
    destination: CapturingServer,
    start_worker: Callable[[Path, str], WorkerProcess],
) -> None:
    """`rq suspend` still holds though the worker looks at most once a second
    (SUSPENSION_LOOK_EVERY) instead of before every job. (As in RQ, a worker already waiting for a
    job takes the next one, then looks.)"""
    from rq.suspension import resume, suspend

    server = private_redis()
    config = write_config(http_config(destination.url))
    bridge = Bridge(config, server.url)
    try:
        suspend(bridge.redis)
        worker = start_worker(config, server.url)
        _wait_for(lambda: "suspended, run `rq resume` to resume" in worker.output())
        bridge.post(sample("booking.created"))
        time.sleep(3)
        assert destination.requests == [], worker.output()
        assert bridge.runtime.queue.count == 1
        resume(bridge.redis)
        _wait_for(lambda: len(destination.requests) == 1)
        bridge.post(sample("order.created"))
        _wait_for(lambda: len(destination.requests) == 2)
        assert worker.process.poll() is None, worker.output()
    finally:
        bridge.close()
