"""/healthz (the process answers) and /readyz (Redis, a live worker, a queue that moves)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from app import create_app
from bridge.store import event_key
from mappings.config import load_config_text
from tests.conftest import http_config
from tests.harness import Bridge, sample


@pytest.fixture
def worker(bridge: Bridge) -> Iterator[SimpleWorker]:
    """A worker registered on the queue, as `salon-bridge worker` registers itself (not working)."""
    registered = SimpleWorker(
        [bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer, name="ready-1"
    )
    registered.register_birth()
    yield registered
    registered.register_death()


def test_healthz_answers_without_redis(destination) -> None:  # noqa: ANN001
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        client = create_app(load_config_text(http_config(destination.url)), redis=unreachable).test_client()
        response = client.get("/healthz")
        assert (response.status_code, response.get_json()) == (200, {"status": "ok"})
        ready = client.get("/readyz")
        assert ready.status_code == 503
        [problem] = ready.get_json()["problems"]
        assert problem.startswith("Redis does not answer (ConnectionError")
    finally:
        unreachable.close()


def test_ready_with_redis_and_a_live_worker(bridge: Bridge, worker: SimpleWorker) -> None:
    response = bridge.client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    del body["redis_persistence"], body["warnings"]  # the shared test Redis's own (tests/test_redis_health.py)
    assert body == {
        "status": "ready",
        "problems": [],
        "redis": True,
        "redis_eviction_policy": "noeviction",
        "redis_writable": True,
        "workers": 1,
        "queue_depth": 0,
        "oldest_job_age_seconds": None,
    }


def test_not_ready_without_a_worker(bridge: Bridge) -> None:
    response = bridge.client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and body["workers"] == 0
    assert body["problems"] == ["no worker is alive: start one with `salon-bridge worker` (or use `salon-bridge up`)"]


def test_a_worker_that_stopped_heartbeating_does_not_count(bridge: Bridge, worker: SimpleWorker) -> None:
    bridge.redis.delete(worker.key)  # what its TTL does when a killed worker stops renewing it
    assert bridge.client.get("/readyz").get_json()["workers"] == 0


def test_not_ready_when_the_oldest_queued_job_waited_too_long(bridge: Bridge, worker: SimpleWorker) -> None:
    event = sample("booking.created")
    bridge.post(event)
    fresh = bridge.client.get("/readyz")
    assert fresh.status_code == 200 and fresh.get_json()["queue_depth"] == 1
    job = bridge.runtime.queue.fetch_job(event_key(event["id"]))
    assert job is not None
    job.enqueued_at = datetime.now(UTC) - timedelta(minutes=10)  # as if no worker had taken it for 10 min
    job.save()
    stuck = bridge.client.get("/readyz")
    assert stuck.status_code == 503
    [problem] = stuck.get_json()["problems"]
    assert problem.startswith("the oldest queued job has waited 60") and "(limit 300 s)" in problem


def test_the_queue_age_limit_comes_from_the_config(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(http_config(destination.url, extra="metrics:\n  max_queue_age: 1h"))
    registered = SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer)
    registered.register_birth()
    try:
        event = sample("order.created")
        bridge.post(event)
        job = bridge.runtime.queue.fetch_job(event_key(event["id"]))
        assert job is not None
        job.enqueued_at = datetime.now(UTC) - timedelta(minutes=10)
        job.save()
        assert bridge.client.get("/readyz").status_code == 200
        job.enqueued_at = datetime.now(UTC) - timedelta(hours=2)
        job.save()
        assert "(limit 3600 s)" in bridge.client.get("/readyz").get_json()["problems"][0]
    finally:
        registered.register_death()
