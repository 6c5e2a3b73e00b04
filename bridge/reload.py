"""A changed config, taken on without a restart: loaded and validated first, switched between jobs.

Each process (`serve`'s web workers, every `worker`) has one ConfigSource. A change of the file
(watched with watchfiles: its folder, since editors write a temp file and rename it over the
config) or a SIGHUP wakes its loader thread, which reads the file, compares its hash with the
version in force and validates it. An invalid, missing, half-written or non-UTF-8 file is kept as a
*rejected* version (logged with file:line and key path, shown by /readyz and /admin) and changes
nothing. A valid one waits in `pending` until the process switches to it where it is safe: a
worker between two jobs (`BridgeWorker.switch_config`), the web process between two requests.

Every process writes what it runs into Redis (`sb:procs`), for `salon-bridge status` and /readyz.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from mappings.config import BridgeConfig, ConfigError, load_config_text

PROCESSES_KEY = "sb:procs"  # hash: process id -> JSON of ProcessReport
REPORT_EVERY = 10.0  # seconds between a process's reports
GONE_AFTER = 45.0  # a process not reported for this long is shown as gone
SETTLE_SECONDS = 0.2  # a file still changing after this is read again (an editor still saving)

log = logging.getLogger("salon_bridge.reload")


def version_of(data: bytes) -> str:
    """The config version: a short hash of the file's bytes, as recorded on each action attempt."""
    return hashlib.sha256(data).hexdigest()[:10]


@dataclass(frozen=True)
class Rejected:
    """A config file that could not be taken on, and why (in check-config's words)."""

    version: str  # of the bytes read; "missing" or "unreadable" when there were none
    errors: list[str]
    at: float

    @property
    def first(self) -> str:
        return self.errors[0] if self.errors else "unknown error"


Loader = Callable[[str, str], BridgeConfig]  # (text, path) -> a validated config, or ConfigError


class ConfigSource:
    """The config of one process: the version in force, the one waiting to be switched to, the last
    rejected one; and the loader thread that reads a changed file."""

    def __init__(self, config: BridgeConfig, load: Loader | None = None, version: str | None = None):
        self.path = config.path
        self.config = config
        self.version = version if version is not None else file_version(self.path)
        self.pending: tuple[BridgeConfig, str] | None = None
        self.rejected: Rejected | None = None
        self._load: Loader = load or (lambda text, path: load_config_text(text, path))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_pending: Callable[[], None] | None = None  # called by the loader thread when a config is ready
        self.on_report: Callable[[], None] | None = None  # called by the loader thread every REPORT_EVERY

    # -- loading (the loader thread, or a test calling it directly) --

    def refresh(self) -> bool:
        """Read the file and validate it if it changed; True when a new valid config is pending."""
        while True:
            data, problem = _read(self.path)
            if problem is not None:
                return self._reject("missing" if data is None and "not found" in problem else "unreadable", [problem])
            assert data is not None
            version = version_of(data)
            with self._lock:
                known = {self.version, self.pending[1] if self.pending else None}
            if version in known:
                with self._lock:
                    if version == self.version:  # edited back to the config in force: nothing waits
                        self.pending, self.rejected = None, None
                return False
            if self.rejected is not None and version == self.rejected.version:
                return False
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data[: exc.start].count(b"\n") + 1
                problem = f"{self.path}:{line}: not UTF-8 text (a byte {data[exc.start]:#04x}); save the file as UTF-8"
                return self._reject(version, [problem])
            try:
                config = self._load(text, self.path)
            except ConfigError as exc:
                # A second change while this one loaded wins: look at the file again before saying so.
                if _changed_since(self.path, version):
                    continue
                return self._reject(version, exc.problems)
            if _changed_since(self.path, version):
                continue
            with self._lock:
                self.pending, self.rejected = (config, version), None
            log.warning("config %s: version %s is valid; switching to it (was %s)", self.path, version, self.version)
            for warning in config.warnings:
                log.warning("config %s: warning: %s", self.path, warning)
            return True

    def _reject(self, version: str, errors: list[str]) -> bool:
        with self._lock:
            if self.rejected is not None and self.rejected.version == version and self.rejected.errors == errors:
                return False
            self.rejected = Rejected(version, errors, time.time())
        log.error(
            "config %s: the changed config is rejected, version %s keeps running:\n%s",
            self.path,
            self.version,
            "\n".join(f"  {error}" for error in errors),
        )
        return False

    # -- switching (the thread that runs jobs or requests) --

    def take(self) -> tuple[BridgeConfig, str] | None:
        """The pending config, which is in force from now on; None when there is none."""
        with self._lock:
            if self.pending is None:
                return None
            (self.config, self.version), self.pending = self.pending, None
            return self.config, self.version

    def state(self) -> str:
        """`config:` as /readyz shows it."""
        if self.rejected is not None:
            return f"rejected ({self.rejected.first})"
        return f"{self.version} (switching to {self.pending[1]})" if self.pending else self.version

    # -- the loader thread --

    def request(self) -> None:
        """Look at the file again soon (a SIGHUP, a change seen by the watcher)."""
        self._wake.set()

    def start(self, watch: bool) -> None:
        """Start the loader thread (woken by `request`, e.g. on SIGHUP) and, with `watch`, the watcher."""
        self._threads.append(threading.Thread(target=self._loader, name="config-loader", daemon=True))
        if watch:
            self._threads.append(threading.Thread(target=self._watcher, name="config-watcher", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def install_sighup(self) -> bool:
        """SIGHUP makes the process read its config again; False where signals cannot be handled
        (not the main thread)."""
        try:
            signal.signal(signal.SIGHUP, lambda signum, frame: self.request())
        except ValueError:
            return False
        return True

    def _loader(self) -> None:
        next_report = 0.0
        while not self._stop.is_set():
            woken = self._wake.wait(timeout=max(0.0, next_report - time.monotonic()))
            if self._stop.is_set():
                return
            if woken:
                self._wake.clear()
                time.sleep(SETTLE_SECONDS)  # an editor's save is often more than one write
                try:
                    ready = self.refresh()
                except Exception:  # noqa: BLE001 - the loader thread must live on; the old config runs
                    log.exception(
                        "config %s: reading the changed config failed; the config in force keeps running", self.path
                    )
                    ready = False
                if ready and self.on_pending is not None:
                    self.on_pending()
            if self.on_report is not None and (woken or time.monotonic() >= next_report):
                self.on_report()
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + REPORT_EVERY

    def _watcher(self) -> None:
        import watchfiles

        target = Path(self.path).resolve()

        def is_target(change: watchfiles.Change, path: str) -> bool:
            return Path(path).name == target.name

        while not self._stop.is_set():
            ready = False
            try:
                for changes in watchfiles.watch(
                    target.parent,
                    watch_filter=is_target,
                    stop_event=self._stop,
                    recursive=False,
                    debounce=200,
                    rust_timeout=1000,
                    yield_on_timeout=True,  # the first (empty) yield: watching has begun
                ):
                    if changes or not ready:  # a change made while the watch was being set up is caught too
                        self.request()
                    ready = True
            except Exception as exc:  # noqa: BLE001 - the folder may vanish for a moment; watch again
                log.warning("config %s: watching the file stopped (%s); watching again in 1 s", self.path, exc)
                self._stop.wait(1.0)


def _read(path: str) -> tuple[bytes | None, str | None]:
    try:
        return Path(path).read_bytes(), None
    except FileNotFoundError:
        return None, f"{path}: config file not found (deleted, or being replaced); the config in force keeps running"
    except OSError as exc:
        return None, f"{path}: cannot read the config file: {exc.strerror}"


def _changed_since(path: str, version: str) -> bool:
    data, _ = _read(path)
    return data is not None and version_of(data) != version


def file_version(path: str) -> str:
    data, _ = _read(path)
    return version_of(data) if data is not None else "unknown"


# -- what each process runs, in Redis --


@dataclass
class ProcessReport:
    role: str  # web or worker
    name: str
    pid: int
    host: str
    version: str
    pending: str = ""
    rejected: str = ""  # the first error of a rejected config
    config: str = ""
    seen_at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return f"{self.role}:{self.host}:{self.pid}" if self.role == "web" else f"{self.role}:{self.name}"


def report_of(source: ConfigSource, role: str, name: str = "") -> ProcessReport:
    rejected = source.rejected.first if source.rejected else ""
    pending = source.pending[1] if source.pending else ""
    return ProcessReport(
        role,
        name or f"{role}-{os.getpid()}",
        os.getpid(),
        socket.gethostname(),
        source.version,
        pending,
        rejected,
        source.path,
    )


def report(redis: Redis, process: ProcessReport) -> None:
    try:
        redis.hset(PROCESSES_KEY, process.key, json.dumps(asdict(process)))
    except RedisError as exc:
        log.debug("could not report the config version to Redis: %s", exc)


def forget(redis: Redis, process: ProcessReport) -> None:
    try:
        redis.hdel(PROCESSES_KEY, process.key)
    except RedisError:
        pass


def processes(redis: Redis, now: float | None = None) -> list[ProcessReport]:
    """The processes that reported lately, by role and name; older reports are removed."""
    now = time.time() if now is None else now
    found: list[ProcessReport] = []
    for key, raw in redis.hgetall(PROCESSES_KEY).items():
        try:
            data: dict[str, Any] = json.loads(raw)
            process = ProcessReport(**data)
        except (ValueError, TypeError):
            redis.hdel(PROCESSES_KEY, key)
            continue
        if now - process.seen_at > GONE_AFTER:
            redis.hdel(PROCESSES_KEY, key)
            continue
        found.append(process)
    return sorted(found, key=lambda p: (p.role, p.name))


def describe(process: ProcessReport) -> str:
    text = f"{process.role} {process.name} (pid {process.pid} on {process.host}): config {process.version}"
    if process.pending:
        text += f", switches to {process.pending} before its next job"
    if process.rejected:
        text += f"; the changed config was rejected: {process.rejected}"
    return text


def config_versions(source: ConfigSource, redis: Redis) -> dict[str, Any]:
    """/readyz's view: this process's config, and the version every process runs."""
    try:
        running = [asdict(p) | {"summary": describe(p)} for p in processes(redis)]
    except RedisError:
        running = []
    return {"config": source.state(), "config_path": source.path, "processes": running}
