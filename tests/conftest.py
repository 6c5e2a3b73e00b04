from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.fakes.http_server import CapturingServer
from tests.harness import SECRET, Bridge

TEST_REDIS_URL = os.environ.get("SALON_BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A dedicated Redis database, flushed before and after each test."""
    connection = Redis.from_url(TEST_REDIS_URL)
    connection.flushdb()
    yield TEST_REDIS_URL
    connection.flushdb()
    connection.close()


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
