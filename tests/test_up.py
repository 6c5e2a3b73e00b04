"""`salon-bridge up`: one process tree with an embedded Redis; clean stop; nothing lost on restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bridge import up as up_module
from bridge.samples import fresh_sample, signed_request
from bridge.up import Child, Up
from mappings.config import load_config_text
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import SECRET

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (our config or data folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


class UpProcess:
    def __init__(self, config: Path, data_dir: Path, port: int, workers: int):
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SALON_BRIDGE_CONFIG")}
        self.log = (data_dir.parent / f"up-{port}-{workers}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "up", "--config", str(config), "--port", str(port),
             "--workers", str(workers), "--data-dir", str(data_dir)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}/webhooks"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return
            except requests.ConnectionError:
                assert self.process.poll() is None, self.output()
                time.sleep(0.1)
        raise AssertionError("up did not start listening: " + self.output())

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def post(self, event_type: str) -> requests.Response:
        body, headers = signed_request(fresh_sample(event_type), SECRET)
        return requests.post(self.url, data=body, headers=headers, timeout=10)

    def stop(self) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.log.close()
        return time.monotonic() - started


def _wait_for(condition, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_up_runs_everything_and_stops_leaving_nothing(tmp_path: Path, destination: CapturingServer) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(http_config(destination.url))
    data_dir = tmp_path / "var"
    up = UpProcess(config, data_dir, _free_port(), workers=2)
    try:
        answer = up.post("booking.created")
        assert answer.status_code == 202, answer.text
        _wait_for(lambda: len(destination.requests) == 1)
        banner = up.output()
        assert f"webhooks:  POST {up.url}" in banner
        assert f"config:    {config}" in banner
        assert f"redis:     embedded, data in {data_dir}" in banner
        assert "salon-bridge send-sample booking.created" in banner
        assert (data_dir / "appendonly.aof").exists() or (data_dir / "appendonlydir").is_dir()
    finally:
        up.stop()
    assert up.process.returncode == 0, up.output()
    assert "salon-bridge stopped" in up.output()
    assert _processes_mentioning(str(tmp_path)) == []


def test_restart_keeps_accepted_events(tmp_path: Path, destination: CapturingServer) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(http_config(destination.url))
    data_dir = tmp_path / "var"
    accept_only = UpProcess(config, data_dir, _free_port(), workers=0)
    try:
        ids = []
        for event_type in ("booking.created", "payment.failed", "order.created"):
            answer = accept_only.post(event_type)
            assert answer.status_code == 202
            ids.append(answer.json()["event_id"])
    finally:
        accept_only.stop()
    assert destination.requests == []
    assert _processes_mentioning(str(tmp_path)) == []

    restarted = UpProcess(config, data_dir, _free_port(), workers=1)
    try:
        _wait_for(lambda: len(destination.requests) == 3)
        assert sorted(r.json()["id"] for r in destination.requests) == sorted(ids)
    finally:
        restarted.stop()
    assert _processes_mentioning(str(tmp_path)) == []


def _up(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(http_config("http://127.0.0.1:9"))
    clean = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SALON_BRIDGE_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "up", "--config", str(config), "--data-dir", str(tmp_path / "var"), *argv],
        env={**clean, **(env or {})}, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def test_up_with_its_port_taken_fails_at_once_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        run = _up(tmp_path, "--port", str(port))
    assert run.returncode == 1
    assert time.monotonic() - started < 10
    assert run.stderr.strip() == (
        f"salon-bridge up: port {port} on 127.0.0.1 is already in use: "
        "stop what uses it, or choose another port with --port"
    )
    assert "salon-bridge is up" not in run.stdout
    assert not (tmp_path / "var").exists()  # nothing was started, not even the embedded Redis


def test_the_embedded_redis_keeps_everything_and_never_evicts(tmp_path: Path) -> None:
    from bridge.redis_health import inspect
    from bridge.up import EmbeddedRedis

    embedded = EmbeddedRedis(tmp_path / "var")
    embedded.start()
    try:
        from redis import Redis

        with Redis(unix_socket_path=str(embedded.socket)) as redis:
            health = inspect(redis)
    finally:
        embedded.stop()
    assert (health.policy, health.aof, health.errors(), health.warnings()) == ("noeviction", True, [], [])


def _crashing_up(tmp_path: Path, redis_url: str) -> Up:
    up = Up(load_config_text(http_config("http://127.0.0.1:1")), "127.0.0.1", 0, 0, tmp_path, dry_run=False)
    up.redis_url_in_use = redis_url
    up.children.append(Child("worker-1", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ)))
    up.children[0].start()
    return up


def test_up_keeps_restarting_a_child_while_redis_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(up_module, "RESTART_BACKOFF_SECONDS", 0.01)
    monkeypatch.setattr(up_module, "REDIS_WAIT_SECONDS", 0.01)
    up = _crashing_up(tmp_path, "redis://127.0.0.1:1/0")
    supervisor = threading.Thread(target=up._supervise, daemon=True)
    supervisor.start()
    _wait_for(lambda: len(up.children[0].restarts) >= 8)
    up._stopping = True
    supervisor.join(10)
    up.stop()
    err = capsys.readouterr().err
    assert "worker-1 keeps exiting (3) while Redis does not answer (ConnectionError" in err
    assert "stopping salon-bridge" not in err


def test_up_gives_up_on_a_crash_loop_that_redis_does_not_explain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    monkeypatch.setattr(up_module, "RESTART_BACKOFF_SECONDS", 0.01)
    up = _crashing_up(tmp_path, redis_url)
    up._supervise()  # returns once it gave up
    up.stop()
    assert "worker-1 keeps exiting; stopping salon-bridge" in capsys.readouterr().err
    assert len(up.children[0].restarts) == 5


def test_up_that_gives_up_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A child that keeps exiting while Redis is fine: `up` stops, and `run` returns 1 (the exit status)."""
    monkeypatch.setattr(up_module, "RESTART_BACKOFF_SECONDS", 0.01)
    up = _crashing_up(tmp_path, redis_url)
    up._supervise()
    up.stop()
    assert up.gave_up
    assert "worker-1 keeps exiting; stopping salon-bridge" in capsys.readouterr().err
