"""Redis that evicts, keeps nothing on disk, forbids CONFIG or is full: refused, warned, reported.

Each test starts its own redis-server with the settings it needs (tests/redis_server.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bridge import redis_health
from bridge.redis_health import DATA_SINCE_KEY, RedisUnfit, check_at_start, data_loss_note, inspect
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample
from tests.redis_server import RedisServer

StartRedis = Callable[..., RedisServer]


@pytest.fixture
def bridge_on(
    write_config: Callable[[str], Path], destination: CapturingServer
) -> Iterator[Callable[[RedisServer], Bridge]]:
    """The bridge on a private Redis, with one worker registered on the queue (not working)."""
    made: list[tuple[Bridge, SimpleWorker]] = []

    def make(server: RedisServer) -> Bridge:
        bridge = Bridge(write_config(http_config(destination.url)), server.url)
        worker = SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer)
        worker.register_birth()
        made.append((bridge, worker))
        return bridge

    yield make
    for bridge, _ in made:
        bridge.close()


def test_an_evicting_redis_is_not_ready_and_says_how_to_fix_it(
    private_redis: StartRedis, bridge_on: Callable[[RedisServer], Bridge]
) -> None:
    bridge = bridge_on(private_redis(maxmemory_policy="allkeys-lru", maxmemory="20mb", appendonly="yes"))
    response = bridge.client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    [problem] = body["problems"]
    assert "maxmemory-policy allkeys-lru" in problem
    assert "`CONFIG SET maxmemory-policy noeviction`" in problem and "redis.conf" in problem
    assert body["redis_eviction_policy"] == "allkeys-lru" and body["warnings"] == []


def test_no_persistence_is_a_warning_not_a_refusal(
    private_redis: StartRedis, bridge_on: Callable[[RedisServer], Bridge]
) -> None:
    bridge = bridge_on(private_redis(appendonly="no", save=""))
    response = bridge.client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["redis_persistence"] == "none"
    [warning] = body["warnings"]
    assert "appendonly no, and no RDB save points" in warning and "`CONFIG SET appendonly yes`" in warning


@pytest.mark.parametrize(
    ("settings", "persistence"),
    [
        ({"appendonly": "yes"}, "append-only file"),
        ({"appendonly": "no", "save": "900 1"}, "snapshots only (save 900 1)"),
    ],
    ids=["aof", "rdb-only"],
)
def test_a_redis_that_keeps_its_data_is_ready_without_warnings(
    private_redis: StartRedis, bridge_on: Callable[[RedisServer], Bridge], settings: dict[str, str], persistence: str
) -> None:
    bridge = bridge_on(private_redis(**settings))
    body = bridge.client.get("/readyz").get_json()
    assert (body["status"], body["redis_persistence"], body["warnings"]) == ("ready", persistence, [])
    assert body["redis_eviction_policy"] == "noeviction" and body["redis_writable"] is True


def test_a_managed_redis_that_forbids_config_is_said_to_be_unchecked(private_redis: StartRedis) -> None:
    server = private_redis(rename_command='CONFIG ""')
    with server.client() as client:
        health = inspect(client)
    assert health.policy == "noeviction"  # INFO memory still tells
    assert health.errors() == []
    [warning] = health.warnings()
    assert warning.startswith("could not check persistence (Redis refused: unknown command")
    assert "make sure the append-only file is on" in warning


def test_a_redis_that_forbids_info_too_is_not_guessed_at(private_redis: StartRedis) -> None:
    server = private_redis(rename_command='INFO ""')
    with server.client() as client:
        health = inspect(client)
    assert (health.policy, health.aof, health.errors()) == (None, None, [])
    assert [w.split(" (")[0] for w in health.warnings()] == [
        "could not check the eviction policy",
        "could not check persistence",
    ]


def test_a_full_redis_is_not_ready_until_memory_is_freed(
    private_redis: StartRedis, bridge_on: Callable[[RedisServer], Bridge]
) -> None:
    server = private_redis(maxmemory="4mb", appendonly="yes")
    bridge = bridge_on(server)
    server.fill()
    refused = bridge.post(sample("booking.created"))
    assert refused.status_code == 503
    response = bridge.client.get("/readyz")
    assert response.status_code == 503
    [problem] = response.get_json()["problems"]
    assert problem.startswith("Redis is full (") and "refuses writes: every webhook is answered 503" in problem
    server.free()
    assert bridge.client.get("/readyz").status_code == 200
    assert bridge.post(sample("booking.created")).status_code == 202


def test_the_start_check_refuses_an_evicting_redis(private_redis: StartRedis) -> None:
    server = private_redis(maxmemory_policy="volatile-lru")
    with server.client() as client, pytest.raises(RedisUnfit, match="maxmemory-policy volatile-lru"):
        check_at_start(client, logging.getLogger("test"))


def test_the_start_check_warns_loudly_and_marks_when_the_data_began(
    private_redis: StartRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(appendonly="no", save="")
    with server.client() as client:
        before = time.time()
        check_at_start(client, logging.getLogger("test"))
        first = float(client.get(DATA_SINCE_KEY) or 0)
        check_at_start(client, logging.getLogger("test"))
        assert before - 0.001 <= first <= time.time()
        assert float(client.get(DATA_SINCE_KEY) or 0) == first  # written once: SET NX
        assert client.ttl(DATA_SINCE_KEY) == -1  # never expires
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(w.startswith("WARNING: Redis keeps nothing on disk") for w in warnings)


def test_the_start_check_lets_a_process_wait_for_an_unreachable_redis(caplog: pytest.LogCaptureFixture) -> None:
    from redis import Redis

    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    assert check_at_start(unreachable, logging.getLogger("test")) is None
    assert "could not check Redis at start (ConnectionError" in caplog.text


def test_the_data_loss_note(private_redis: StartRedis) -> None:
    server = private_redis()
    with server.client() as client:
        assert "the mark written at start is gone" in data_loss_note(client, time.time())
        redis_health.inspect(client, mark_start=True)
        since = float(client.get(DATA_SINCE_KEY) or 0)
        assert data_loss_note(client, since + 1) == ""  # received after the data began: nothing was lost
        note = data_loss_note(client, since - 60)
        assert note.startswith("; Redis lost the bridge's memory at ") and "after this event was received" in note


SHIPPED_NOTICE = """
  - name: shipped
    on: ["order.shipped"]
    actions:
      - connector: crm
        body: {to: "{{ order.cliente.email }}"}
"""


def impatient_config(destination: CapturingServer) -> str:
    """order.shipped to the CRM with the customer's address, waiting 1 s for missing data."""
    text = http_config(destination.url, mappings=SHIPPED_NOTICE)
    return text.replace("  jitter: 0", "  jitter: 0\n  wait_for_missing_data: 1s")


def test_after_redis_restarted_empty_missing_data_is_blamed_on_the_loss_not_the_platform(
    private_redis: StartRedis, write_config: Callable[[str], Path], destination: CapturingServer
) -> None:
    server = private_redis()
    bridge = Bridge(write_config(impatient_config(destination)), server.url)  # a start: the mark is written
    try:
        bridge.post(sample("order.created"))
        bridge.drain()  # memory has the order's customer
        server.restart_empty()  # no persistence: memory and the mark are gone
        shipped = sample("order.shipped")
        assert bridge.post(shipped).status_code == 202
        bridge.drain()
        state = bridge.record(shipped["id"]).actions["shipped/0"]
        assert state.history[0]["error"].startswith("waiting for earlier events: ")
        assert state.last_error.startswith(
            "mappings[0].actions[0].body.to: order 789: cliente unknown (order.created not received); "
        )
        assert "Redis has lost the bridge's data since it started" in state.last_error
        assert "may have been received and lost with it" in state.last_error
    finally:
        bridge.close()


def test_without_a_loss_missing_data_still_names_the_event_not_received(
    private_redis: StartRedis, write_config: Callable[[str], Path], destination: CapturingServer
) -> None:
    server = private_redis()
    bridge = Bridge(write_config(impatient_config(destination)), server.url)
    try:
        shipped = sample("order.shipped")
        bridge.post(shipped)
        bridge.drain()
        state = bridge.record(shipped["id"]).actions["shipped/0"]
        assert state.last_error.endswith("order 789: cliente unknown (order.created not received)")
    finally:
        bridge.close()
