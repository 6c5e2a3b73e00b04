"""The bridge and the baseline as WSGI factories for granian (a Rust HTTP server), to measure them
under another server than gunicorn with everything else the same.

    SB_CONFIG=config.yaml granian --interface wsgi --factory --workers 2 --blocking-threads 4 \
        bench.prototypes.granian_apps:bridge
    SB_REDIS_URL=redis://127.0.0.1:6379/3 granian ... bench.prototypes.granian_apps:baseline
"""

from __future__ import annotations

import os
from typing import Any


def bridge() -> Any:
    """`salon-bridge serve`'s app: config, secrets masked in logs, INFO lines to stderr, metrics."""
    from app import create_app
    from bridge import logs
    from bridge.server import prepare_metrics_dir
    from mappings.config import load_config

    logs.configure("info", "text")
    config = load_config(os.environ["SB_CONFIG"])
    logs.remember_secrets(logs.config_secrets(config))
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", prepare_metrics_dir())
    return create_app(config)


def baseline() -> Any:
    from bench.baseline_app import create_app

    return create_app(os.environ["SB_REDIS_URL"])
