from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.fakes.http_server import CapturingServer
from tests.harness import SECRET, Bridge
from tests.redis_server import RedisServer

CLAIM_KEY = "salon-bridge-tests:claimed-by"


@pytest.fixture(scope="session")
def test_redis_url() -> Iterator[str]:
    """$SALON_BRIDGE_TEST_REDIS_URL, else a database of the local Redis (15 down to 1) that no other
    test run has claimed, so that several runs on one machine never flush each other's data."""
    if os.environ.get("SALON_BRIDGE_TEST_REDIS_URL"):
        yield os.environ["SALON_BRIDGE_TEST_REDIS_URL"]
        return
    for db in range(15, 0, -1):
        connection = Redis(host="127.0.0.1", port=6379, db=db)
        if connection.set(CLAIM_KEY, os.getpid(), nx=True, ex=3600):
            yield f"redis://127.0.0.1:6379/{db}"
            connection.delete(CLAIM_KEY)
            connection.close()
            return
        connection.close()
    raise RuntimeError("every Redis database 1-15 is claimed by another test run")


@pytest.fixture
def redis_url(test_redis_url: str) -> Iterator[str]:
    """A dedicated Redis database, flushed (all but the claim) before and after each test."""
    connection = Redis.from_url(test_redis_url)
    claim = connection.get(CLAIM_KEY)
    connection.flushdb()
    if claim is not None:
        connection.set(CLAIM_KEY, claim, ex=3600)
    yield test_redis_url
    connection.flushdb()
    if claim is not None:
        connection.set(CLAIM_KEY, claim, ex=3600)
    connection.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts redis-servers of its own with the given settings (`maxmemory="20mb"`...); stops them after."""
    servers: list[RedisServer] = []

    def start(**settings: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", **settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def destination() -> Iterator[CapturingServer]:
    server = CapturingServer().start()
    yield server
    server.stop()


def http_config(url: str, mappings: str | None = None, extra: str = "", connector_extra: str = "") -> str:
    """A config with one `http` connector ("crm") pointing at a fake destination."""
    if mappings is None:
        mappings = """
  - name: all-to-crm
    on: ["*"]
    actions:
      - connector: crm
        name: notify
        body: {id: "{{ event.id }}", type: "{{ type }}", tenant: "{{ tenant_id }}"}
"""
    return f"""
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{SECRET}"]
retry:
  schedule: [0.1, 0.1, 0.1]
  jitter: 0
{extra}
connectors:
  crm:
    type: http
    url: "{url}/hooks"
    timeout: 2
{connector_extra}
mappings:
{mappings}
"""


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def make_bridge(redis_url: str, write_config: Callable[[str], Path]) -> Iterator[Callable[[str], Bridge]]:
    bridges: list[Bridge] = []

    def make(text: str) -> Bridge:
        bridge = Bridge(write_config(text), redis_url)
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        bridge.close()


@pytest.fixture
def bridge(make_bridge: Callable[[str], Bridge], destination: CapturingServer) -> Bridge:
    """The bridge with every event type mapped to one `http` action on the fake destination."""
    return make_bridge(http_config(destination.url))
