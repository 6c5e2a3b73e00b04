"""The Flask application: the webhook endpoint, the messaging callbacks, health checks, /metrics and
the admin, nothing else."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from flask import Flask, Response, jsonify, request
from redis import Redis
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_input_stream

from bridge import metrics
from bridge.admin import register_admin
from bridge.callbacks import register_callbacks
from bridge.feeds import register_feeds
from bridge.ingest import SIGNATURE_HEADER, Ingestor, Outcome
from bridge.queue import connect, resolve_redis_url, work_queue
from bridge.reload import config_versions
from mappings.config import BridgeConfig, default_config_path, load_config

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("salon_bridge.web")


class WebhookFastPath:
    """WSGI middleware: a POST /webhooks with a Content-Length within the limit is answered here,
    without Flask's request and response objects, which cost as much CPU as all the bridge does
    for an event (docs/performance.md: +32% events/s). Everything else goes on to Flask."""

    def __init__(self, next_app: WSGIApplication, answer: Callable[[bytes, str | None], Outcome], max_body: int):
        self.next_app = next_app
        self.answer = answer
        self.max_body = max_body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        if (
            environ.get("PATH_INFO") != "/webhooks"
            or environ.get("REQUEST_METHOD") != "POST"
            or not length.isdigit()
            or int(length) > self.max_body  # Flask answers 413
        ):
            return self.next_app(environ, start_response)
        body = environ["wsgi.input"].read(int(length))
        status, headers, payload = self.respond(body, environ.get("HTTP_X_SALONBOOKIT_SIGNATURE"))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [payload]

    def respond(self, body: bytes, signature: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """The whole answer to one delivery; `serve`'s front calls it directly (bridge/front.py)."""
        outcome = self.answer(body, signature)
        payload = json.dumps(outcome.body).encode() + b"\n"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        return outcome.status, [*headers, *outcome.headers.items()], payload


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

    def answer_webhook(body: bytes, signature: str | None) -> Outcome:
        started = time.perf_counter()
        outcome = ingestor.handle(body, signature)
        elapsed = time.perf_counter() - started
        web_metrics.observe(outcome.label, outcome.envelope, elapsed)
        # An accepted event is in the event log (admin, `salon-bridge events`) and its actions log
        # their own lines; a line here cost as much CPU as the rest of the request (docs/performance.md).
        level = logging.DEBUG if outcome.label == "accepted" else logging.INFO
        if not log.isEnabledFor(level):
            return outcome
        envelope = outcome.envelope or {}
        log.log(
            level,
            "webhook event=%s type=%s tenant=%s outcome=%s status=%d duration_ms=%.1f%s",
            envelope.get("id", "-"),
            envelope.get("type", "-"),
            envelope.get("tenant_id", "-"),
            outcome.label,
            outcome.status,
            elapsed * 1000,
            f" error={outcome.body['error']!r}" if "error" in outcome.body else "",
        )
        return outcome

    @app.post("/webhooks")
    def webhooks():
        """Deliveries without a Content-Length (chunked); the others take WebhookFastPath."""
        # One byte past the limit, so that an oversized chunked body is 413, not cut to fit (then a 401).
        body = get_input_stream(request.environ, max_content_length=config.webhook.max_body_bytes + 1).read()
        outcome = answer_webhook(body, request.headers.get(SIGNATURE_HEADER))
        return jsonify(outcome.body), outcome.status, outcome.headers

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        result = metrics.readiness(redis, queue, config.model.metrics.max_queue_age)
        body = {"status": "ready" if result.ready else "not ready", "problems": result.problems, **result.checks}
        source = app.extensions["salon_bridge"].get("config_source")  # set by `serve` (bridge.server.LiveApp)
        if source is not None:  # a rejected config is shown, and the bridge is still ready on the old one
            body |= config_versions(source, redis)
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
    register_feeds(app, config, redis)
    register_callbacks(app, config, redis)
    fast_path = WebhookFastPath(app.wsgi_app, answer_webhook, config.webhook.max_body_bytes)
    app.wsgi_app = fast_path  # type: ignore[method-assign]
    app.extensions["salon_bridge"]["webhook"] = fast_path.respond

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"body is larger than {config.webhook.max_body_bytes} bytes"
        return jsonify({"error": message}), exc.code

    return app
