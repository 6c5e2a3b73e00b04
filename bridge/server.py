"""`serve`: the Flask app under gunicorn, the production WSGI server."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from mappings.config import BridgeConfig


class _Gunicorn(BaseApplication):
    def __init__(self, config: BridgeConfig, options: dict[str, Any]):
        self.bridge_config = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from app import create_app

        return create_app(self.bridge_config)


def prepare_metrics_dir() -> str:
    """prometheus_client's multiprocess mode: every gunicorn process counts into one folder and any
    of them answers /metrics with the sum. Emptied at start: counters start again at zero."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        data_dir = os.environ.get("SALON_BRIDGE_DATA_DIR")
        folder = str(Path(data_dir) / "metrics") if data_dir else tempfile.mkdtemp(prefix="salon-bridge-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    Path(folder).mkdir(parents=True, exist_ok=True)
    for stale in Path(folder).glob("*.db"):
        stale.unlink()
    return folder


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def gunicorn_options(host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": 30,
        "graceful_timeout": 5,
        "keepalive": 5,
        "accesslog": None,
        "preload_app": True,
        "child_exit": _child_exit,
    }


def serve(config: BridgeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 2, threads: int = 4) -> None:
    prepare_metrics_dir()
    _Gunicorn(config, gunicorn_options(host, port, workers, threads)).run()
