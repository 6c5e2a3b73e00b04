"""`serve`: the Flask app under gunicorn, the production WSGI server."""

from __future__ import annotations

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
    }


def serve(config: BridgeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 2, threads: int = 4) -> None:
    _Gunicorn(config, gunicorn_options(host, port, workers, threads)).run()
