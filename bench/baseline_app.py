"""The ingest baseline: the least a webhook receiver on Flask + RQ can do, under the same server
(granian) and settings as `salon-bridge serve`.

    .venv/bin/python bench/baseline_app.py --port 8100 --redis-url redis://127.0.0.1:6379/14

Per request it checks the HMAC of the raw body (constant time), reads the event id, does a Redis
`SET NX` on it, and an RQ `enqueue` of the raw event: three separate round trips (SET, then RQ's
SADD of the queue registry, then its MULTI with the job hash and the queue push). No envelope
validation, no event log, no logging. `noop` is also the job of the bare RQ drain baseline.

With --forward-to URL each job is `forward` instead: the one POST of the event's id to URL that the
bridge's http action makes (bench/latency.py's baseline, from the platform's POST to the effect).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from bench.common import SECRET  # noqa: E402
from bridge.queue import RESULT_TTL  # noqa: E402

BASELINE_QUEUE = "bench-baseline"
NOOP_QUEUE = "bench-noop"


def noop(*args: Any) -> None:
    """A job that does nothing: the bare RQ per-job cost."""
    return None


_session: Any = None


def forward(url: str, raw: str) -> None:
    """The job of the latency baseline: POST the event's id to the destination, as the bridge's
    http action does (one keep-alive session per worker process)."""
    global _session
    if _session is None:
        import requests

        _session = requests.Session()
    _session.post(url, json={"event": json.loads(raw)["id"]}, timeout=10).raise_for_status()


def create_app(redis_url: str = "", secret: str = SECRET, redis: Redis | None = None, forward_to: str = "") -> Flask:
    if redis is None:
        redis = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    queue = Queue(BASELINE_QUEUE, connection=redis, serializer=JSONSerializer)
    key = secret.encode()
    app = Flask(__name__)

    @app.post("/webhooks")
    def webhooks():  # type: ignore[no-untyped-def]
        body = request.get_data(cache=False)
        given = request.headers.get("X-SalonBookIt-Signature", "").removeprefix("sha256=").encode()
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, given):
            return jsonify({"error": "bad signature"}), 401
        event_id = json.loads(body)["id"]
        if not redis.set(f"baseline:seen:{event_id}", 1, nx=True, ex=86400):
            return jsonify({"received": True, "duplicate": True}), 200
        if forward_to:
            queue.enqueue("bench.baseline_app.forward", forward_to, body.decode(), result_ttl=RESULT_TTL)
        else:
            queue.enqueue("bench.baseline_app.noop", body.decode())
        return jsonify({"received": True}), 202

    return app


def factory() -> Any:
    """Granian's factory, in each worker process: behind the same front as `serve`'s app."""
    from bridge.server import front

    app = create_app(os.environ["SB_BASELINE_REDIS_URL"], forward_to=os.environ.get("SB_BASELINE_FORWARD_TO", ""))
    return front(app, max_body=1024 * 1024, body_timeout=10.0)


def main() -> None:
    from granian.server import Server

    from bridge.server import server_options

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--forward-to", default="", help="jobs POST the event's id here (bench/latency.py)")
    args = parser.parse_args()
    os.environ["SB_BASELINE_REDIS_URL"] = args.redis_url
    os.environ["SB_BASELINE_FORWARD_TO"] = args.forward_to
    # The very options `salon-bridge serve` uses, so only the application differs.
    Server("bench.baseline_app:factory", **server_options(args.host, args.port, args.workers, args.threads)).serve()


if __name__ == "__main__":
    main()
