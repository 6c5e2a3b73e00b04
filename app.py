"""The Flask application: the webhook endpoint, health checks, /metrics and the admin, nothing else."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, jsonify, request
from redis import Redis
from werkzeug.exceptions import HTTPException

from bridge import metrics
from bridge.admin import register_admin
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
    queue = work_queue(redis)
    ingestor = Ingestor(config, redis, queue)
    web_metrics = metrics.WebMetrics()
    exposition = metrics.Exposition(web_metrics, redis, queue)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.webhook.max_body_bytes
    app.extensions["salon_bridge"] = {"config": config, "redis": redis}

    @app.post("/webhooks")
    def webhooks():
        started = time.perf_counter()
        outcome = ingestor.handle(request.get_data(cache=False), request.headers.get(SIGNATURE_HEADER))
        elapsed = time.perf_counter() - started
        web_metrics.observe(outcome.label, outcome.envelope, elapsed)
        envelope = outcome.envelope or {}
        log.info(
            "webhook event=%s type=%s tenant=%s outcome=%s status=%d duration_ms=%.1f%s",
            envelope.get("id", "-"),
            envelope.get("type", "-"),
            envelope.get("tenant_id", "-"),
            outcome.label,
            outcome.status,
            elapsed * 1000,
            f" error={outcome.body['error']!r}" if "error" in outcome.body else "",
        )
        return jsonify(outcome.body), outcome.status, outcome.headers

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        result = metrics.readiness(redis, queue, config.model.metrics.max_queue_age)
        body = {"status": "ready" if result.ready else "not ready", "problems": result.problems, **result.checks}
        return jsonify(body), 200 if result.ready else 503

    @app.get("/metrics")
    def metrics_endpoint():
        token = config.model.metrics.token
        if token and not metrics.bearer_matches(request.headers.get("Authorization"), token):
            message = "this endpoint needs `Authorization: Bearer <metrics.token>`"
            return jsonify({"error": message}), 401, {"WWW-Authenticate": 'Bearer realm="metrics"'}
        body, content_type = exposition.render(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    register_admin(app, config, redis)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"body is larger than {config.webhook.max_body_bytes} bytes"
        return jsonify({"error": message}), exc.code

    return app
