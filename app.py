"""The Flask application: the webhook endpoint and health checks, nothing else."""

from __future__ import annotations

import logging
import time

from flask import Flask, jsonify, request
from redis import Redis
from werkzeug.exceptions import HTTPException

from bridge.ingest import SIGNATURE_HEADER, Ingestor
from bridge.queue import connect, work_queue
from bridge.runtime import resolve_redis_url
from mappings.config import BridgeConfig, default_config_path, load_config

log = logging.getLogger("salon_bridge.web")


def create_app(config: BridgeConfig | str | None = None, redis: Redis | None = None) -> Flask:
    """Build the app from a loaded config (or a path; default: $SALON_BRIDGE_CONFIG or ./config.yaml)."""
    if not isinstance(config, BridgeConfig):
        config = load_config(config or default_config_path())
    redis = redis if redis is not None else connect(resolve_redis_url(config))
    ingestor = Ingestor(config, redis, work_queue(redis))

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.webhook.max_body_bytes
    app.extensions["salon_bridge"] = {"config": config, "redis": redis}

    @app.post("/webhooks")
    def webhooks():
        started = time.perf_counter()
        outcome = ingestor.handle(request.get_data(cache=False), request.headers.get(SIGNATURE_HEADER))
        envelope = outcome.envelope or {}
        log.info(
            "webhook event=%s type=%s tenant=%s outcome=%s status=%d duration_ms=%.1f%s",
            envelope.get("id", "-"),
            envelope.get("type", "-"),
            envelope.get("tenant_id", "-"),
            outcome.label,
            outcome.status,
            (time.perf_counter() - started) * 1000,
            f" error={outcome.body['error']!r}" if "error" in outcome.body else "",
        )
        return jsonify(outcome.body), outcome.status, outcome.headers

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"body is larger than {config.webhook.max_body_bytes} bytes"
        return jsonify({"error": message}), exc.code

    return app
