"""`serve`: the Flask app under granian, the production server.

Granian does the HTTP work (parsing, keep-alive, writing answers) in Rust, outside the GIL.
Measured against gunicorn's threaded worker with the same processes and threads
(docs/performance.md): 37% more webhooks per second, p99 14.6 ms instead of 20.6 ms, and none of
gthread's runs stuck at ~1,000 events/s.

Granian serves `bridge.front.Front` over its RSGI interface: each request's body is awaited in
the worker's event loop (with `webhook.body_timeout`), and only complete requests reach the
`--threads` threads that run the Flask app, so slow or idle clients cannot hold them (issue 13).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server import Server

from bridge.front import Front
from mappings.config import BridgeConfig

CONFIG_PATH_ENV = "SALON_BRIDGE_CONFIG"
WATCH_ENV = "SALON_BRIDGE_WATCH_CONFIG"
LOG_LEVEL_ENV = "SALON_BRIDGE_LOG_LEVEL"
THREADS_ENV = "SALON_BRIDGE_WEB_THREADS"


def prepare_metrics_dir() -> str:
    """prometheus_client's multiprocess mode: every web process counts into one folder and any of
    them answers /metrics with the sum. Emptied at start: counters start again at zero."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        data_dir = os.environ.get("SALON_BRIDGE_DATA_DIR")
        folder = str(Path(data_dir) / "metrics") if data_dir else tempfile.mkdtemp(prefix="salon-bridge-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    Path(folder).mkdir(parents=True, exist_ok=True)
    for stale in Path(folder).glob("*.db"):
        stale.unlink()
    return folder


def server_options(host: str, port: int, workers: int, threads: int, header_timeout: float = 10.0) -> dict[str, Any]:
    """Granian's settings for `serve`; the ingest benchmark runs its baseline with the same.

    `threads` reach the factory through the environment (granian's workers are new processes)."""
    os.environ[THREADS_ENV] = str(threads)
    return {
        "address": host,
        "port": port,
        "interface": Interfaces.RSGI,
        "workers": workers,
        "blocking_threads": 1,  # the event loop's thread; the app's threads are the front's pool
        "http": HTTPModes.http1,  # the platform posts HTTP/1.1; no h2c upgrade to think about
        # A client still sending its headers after this is disconnected by granian itself.
        "http1_settings": HTTP1Settings(header_read_timeout=int(header_timeout * 1000)),
        "websockets": False,
        "log_access": False,  # the app logs one line per webhook, with its outcome
        # granian's own lines (start, workers, stop) go through the bridge's handler: same format, masked
        "log_dictconfig": {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"_granian": {"propagate": True}},
        },
        "respawn_failed_workers": True,
        "workers_kill_timeout": 5,
        "factory": True,
    }


def front(wsgi_app: Any, max_body: int, body_timeout: float) -> Front:
    """The RSGI front around a WSGI app, with the thread count `server_options` was given."""
    webhook = getattr(wsgi_app, "extensions", {}).get("salon_bridge", {}).get("webhook")
    return Front(wsgi_app, int(os.environ.get(THREADS_ENV, "4")), max_body, body_timeout, webhook)


def web_app() -> Front:
    """Granian's factory, run in each worker process: the config `serve` loaded, by its path; taken
    on again when it changes (on SIGHUP, and when watched), between requests (LiveApp)."""
    from bridge import logs
    from bridge.queue import connect, resolve_redis_url
    from bridge.reload import ConfigSource
    from mappings.config import load_config

    logs.configure(os.environ.get(LOG_LEVEL_ENV, "info"), os.environ.get(logs.FORMAT_ENV, "text"))
    config = load_config(os.environ[CONFIG_PATH_ENV])
    logs.remember_secrets(logs.config_secrets(config))
    live = LiveApp(ConfigSource(config), connect(resolve_redis_url(config)))
    live.start(watch=os.environ.get(WATCH_ENV) == "1")
    return Front(live, int(os.environ.get(THREADS_ENV, "4")), config.webhook.max_body_bytes,
                 config.webhook.body_timeout, live.webhook)  # fmt: skip


class LiveApp:
    """The web process's WSGI app, built again from a changed config. Each request reads `self.app`
    once, so it runs entirely on one config; the switch is one assignment. The listening address,
    Redis, `webhook.max_body_bytes` and `webhook.body_timeout` are read at start only."""

    def __init__(self, source: Any, redis: Any):
        from bridge.reload import report, report_of

        self.source, self.redis = source, redis
        self.app = self._build(source.config)
        source.on_pending = self.switch
        source.on_report = lambda: report(redis, report_of(source, "web"))

    def _build(self, config: BridgeConfig) -> Any:
        from app import create_app

        app = create_app(config, self.redis)
        app.extensions["salon_bridge"]["config_source"] = self.source
        return app

    def start(self, watch: bool) -> None:
        if not self.source.install_sighup():
            logging.getLogger("salon_bridge.web").debug("SIGHUP cannot be handled in this thread")
        self.source.start(watch)

    def switch(self) -> None:
        from bridge import logs

        taken = self.source.take()
        if taken is None:
            return
        config, version = taken
        logs.remember_secrets(logs.config_secrets(config))
        self.app = self._build(config)
        logging.getLogger("salon_bridge.web").warning("web %d: switched to config version %s", os.getpid(), version)

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)

    def webhook(self, body: bytes, signature: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        answer: Any = self.app.extensions["salon_bridge"]["webhook"]
        return answer(body, signature)


def check_redis_at_start(config: BridgeConfig) -> None:
    """Refuse an evicting Redis, warn about one without persistence (bridge.redis_health)."""
    from bridge.queue import connect, resolve_redis_url
    from bridge.redis_health import check_at_start

    with connect(resolve_redis_url(config)) as redis:
        check_at_start(redis, logging.getLogger("salon_bridge.web"))


def serve(
    config: BridgeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 2,
    threads: int = 4,
    watch: bool = False,
) -> None:
    check_redis_at_start(config)
    os.environ[WATCH_ENV] = "1" if watch else "0"
    prepare_metrics_dir()
    os.environ[CONFIG_PATH_ENV] = str(Path(config.path).resolve())
    os.environ[LOG_LEVEL_ENV] = logging.getLevelName(logging.getLogger().level).lower()
    options = server_options(host, port, workers, threads, header_timeout=config.webhook.body_timeout)
    Server("bridge.server:web_app", **options).serve()
