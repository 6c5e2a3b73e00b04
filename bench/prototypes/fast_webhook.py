"""`salon-bridge serve` with POST /webhooks answered before Flask: a prototype of the proposed change.

    .venv/bin/python bench/prototypes/fast_webhook.py serve --config CONFIG --port 8300
    .venv/bin/python bench/ingest.py --targets bridge,fastpath,baseline

Per request Flask and Werkzeug (request and response objects, routing, context push) cost about
as much CPU as everything the bridge does for an event. This WSGI middleware takes POST /webhooks
with a Content-Length straight from the WSGI environ to the same `Ingestor.handle`, logs the same
line and answers the same JSON; every other request (and a body without Content-Length or over
the size limit, for Flask's own 411/413 handling) goes on to the Flask app unchanged.

Prototype shortcut: it builds its own Ingestor and WebMetrics from the app's config and Redis;
in the product `create_app` would wrap `app.wsgi_app` with the ones it already has, so /metrics
counts these requests.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a script from the repository

from flask import Flask  # noqa: E402

import app as app_module  # noqa: E402
from bridge import metrics  # noqa: E402
from bridge.ingest import Ingestor  # noqa: E402
from bridge.queue import work_queue  # noqa: E402

log = logging.getLogger("salon_bridge.web")
_PHRASES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


class WebhookFastPath:
    """WSGI middleware: POST /webhooks handled without Flask, the rest passed on."""

    def __init__(self, flask_app: Flask):
        self.next = flask_app.wsgi_app
        shared = flask_app.extensions["salon_bridge"]
        config, redis = shared["config"], shared["redis"]
        self.ingestor = Ingestor(config, redis, work_queue(redis))
        self.max_body = config.webhook.max_body_bytes
        self.web_metrics = metrics.WebMetrics()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length_text = environ.get("CONTENT_LENGTH") or ""
        if (
            environ.get("PATH_INFO") != "/webhooks"
            or environ.get("REQUEST_METHOD") != "POST"
            or not length_text.isdigit()
            or int(length_text) > self.max_body
        ):
            return self.next(environ, start_response)
        body = environ["wsgi.input"].read(int(length_text))
        started = time.perf_counter()
        outcome = self.ingestor.handle(body, environ.get("HTTP_X_SALONBOOKIT_SIGNATURE"))
        elapsed = time.perf_counter() - started
        self.web_metrics.observe(outcome.label, outcome.envelope, elapsed)
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
        payload = json.dumps(outcome.body).encode() + b"\n"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        headers += list(outcome.headers.items())
        start_response(_PHRASES.get(outcome.status, str(outcome.status)), headers)
        return [payload]


product_create_app = app_module.create_app


def create_app_fast(*args: Any, **kwargs: Any) -> Flask:
    flask_app = product_create_app(*args, **kwargs)
    flask_app.wsgi_app = WebhookFastPath(flask_app)  # type: ignore[method-assign]
    return flask_app


def main() -> int:
    app_module.create_app = create_app_fast  # bridge.server imports it at load time
    from bridge.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
