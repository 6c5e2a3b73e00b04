"""`salon-bridge serve` as a real process: slow or idle clients cannot stall it (issue 13), and the
front hands the Flask app complete requests with a faithful WSGI environ."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis

from bridge.samples import fresh_sample, signed_request
from bridge.store import event_key, seen_key
from tests.conftest import http_config
from tests.harness import SECRET

pytestmark = pytest.mark.slow

BODY_TIMEOUT = 2  # seconds, configured for these tests; the default is 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Serve:
    """`salon-bridge serve` in its own session, on a free port, logging to a file."""

    def __init__(self, config: Path, log_path: Path, workers: int = 2, threads: int = 4, watch: bool = False):
        self.port = _free_port()
        self.log_path = log_path
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / "metrics")}
        env.pop("SALON_BRIDGE_CONFIG", None)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "serve", "--config", str(config), "--port", str(self.port),
                 "--workers", str(workers), "--threads", str(threads), *(["--watch-config"] if watch else [])],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return
            except requests.ConnectionError:
                assert self.process.poll() is None, self.output()
                time.sleep(0.1)
        raise AssertionError("serve did not start listening: " + self.output())

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def deliver(self, event: dict | None = None) -> requests.Response:
        body, headers = signed_request(event or fresh_sample("booking.created"), SECRET)
        return requests.post(f"{self.url}/webhooks", data=body, headers=headers, timeout=5)

    def raw(self, request: bytes) -> socket.socket:
        """A connection that has sent `request` (maybe only part of one) and waits."""
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        connection.sendall(request)
        return connection

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def serve(
    redis_url: str, write_config: Callable[[str], Path], tmp_path: Path, destination
) -> Iterator[Callable[..., Serve]]:  # noqa: ANN001
    started: list[Serve] = []

    def start(max_body: int = 1024 * 1024, **size: int) -> Serve:
        text = http_config(destination.url).replace(
            "secrets:", f"body_timeout: {BODY_TIMEOUT}s\n  max_body_bytes: {max_body}\n  secrets:"
        )
        config = write_config(text + f'redis_url: "{redis_url}"\n')
        server = Serve(config, tmp_path / f"serve-{len(started)}.log", **size)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _answer(connection: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout`)."""
    connection.settimeout(timeout)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    return received


def _partial_delivery() -> bytes:
    """Headers that announce a 1,000-byte body, and the first few bytes of it."""
    return b'POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"id": "evt_'


def test_slow_clients_cannot_stall_serve_and_are_answered_408(serve) -> None:  # noqa: ANN001
    """Before the front, 8 such clients held serve's 2 x 4 threads: /healthz and deliveries waited."""
    server = serve(workers=2, threads=4)
    held = [server.raw(_partial_delivery()) for _ in range(20)]
    time.sleep(0.3)  # they all reached the server
    try:
        started = time.monotonic()
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        event = fresh_sample("booking.created")
        response = server.deliver(event)
        assert response.status_code == 202, response.text
        assert time.monotonic() - started < 2, "a complete request waited behind the slow ones"
        answers = [_answer(connection, timeout=BODY_TIMEOUT + 8) for connection in held]
    finally:
        for connection in held:
            connection.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0][:200]
    assert f"did not arrive within {BODY_TIMEOUT} s".encode() in answers[0]
    # The same deliveries, complete, are still answered normally afterwards.
    assert server.deliver().status_code == 202


def test_a_trickling_body_is_cut_at_the_deadline_not_kept_alive_by_each_byte(serve) -> None:  # noqa: ANN001
    server = serve(workers=1, threads=1)
    connection = server.raw(_partial_delivery())
    started = time.monotonic()
    connection.settimeout(0.5)
    answer = b""
    try:
        while time.monotonic() - started < BODY_TIMEOUT + 8 and not answer:
            try:
                connection.sendall(b"1")
                answer = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
    finally:
        connection.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < BODY_TIMEOUT + 3


def test_a_client_that_leaves_mid_body_costs_nothing(serve) -> None:  # noqa: ANN001
    server = serve(workers=1, threads=1)
    for _ in range(10):
        server.raw(_partial_delivery()).close()
    assert server.deliver().status_code == 202
    assert server.process.poll() is None


def test_chunked_deliveries_are_accepted_and_oversized_ones_are_413(serve, redis_url: str) -> None:  # noqa: ANN001
    server = serve(max_body=4000, workers=1, threads=1)
    event = fresh_sample("booking.created")
    body, headers = signed_request(event, SECRET)
    chunks = iter([body[:100], body[100:]])  # a generator body: requests sends it chunked
    response = requests.post(f"{server.url}/webhooks", data=chunks, headers=headers, timeout=5)
    assert response.status_code == 202, response.text
    assert response.json() == {"received": True, "event_id": event["id"]}

    big = fresh_sample("booking.created")
    big["data"]["booking"]["notas"] = "x" * 5000
    body, headers = signed_request(big, SECRET)
    response = requests.post(f"{server.url}/webhooks", data=iter([body]), headers=headers, timeout=5)
    assert response.status_code == 413
    assert response.json() == {"error": "body is larger than 4000 bytes"}
    declared = requests.post(f"{server.url}/webhooks", data=body, headers=headers, timeout=5)
    assert declared.status_code == 413
    redis = Redis.from_url(redis_url)
    assert redis.exists(seen_key(event_key(event["id"]))) == 1
    assert redis.exists(seen_key(event_key(big["id"]))) == 0
    redis.close()


def test_the_flask_app_sees_paths_queries_and_headers_as_under_wsgi(serve) -> None:  # noqa: ANN001
    server = serve(workers=1, threads=1)
    # Werkzeug answers 404 for an unknown path, 405 for a known one with the wrong method.
    assert requests.get(f"{server.url}/webhooks", timeout=5).status_code == 405
    assert requests.get(f"{server.url}/healthz?x=%20y", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{server.url}/health%7A", timeout=5).status_code == 200  # %7A is "z"
    assert requests.get(f"{server.url}/caf%C3%A9", timeout=5).status_code == 404
    metrics = requests.get(f"{server.url}/metrics", headers={"Accept": "text/plain"}, timeout=5)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    answer = json.loads(server.deliver().text)
    assert answer["received"] is True
