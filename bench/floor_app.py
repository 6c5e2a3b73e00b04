"""The ingest floor: only what the design needs on the request path, under `serve`'s server.

    .venv/bin/python bench/floor_app.py --port 8200 --redis-url redis://127.0.0.1:6379/3

Per request: the HMAC of the raw body (constant time), the event id read from the JSON, and one
Redis script that does SET NX of the id, HSET of the body, EXPIRE, and LPUSH of the key onto a
list. No envelope checks, no RQ job, no log line, no metrics. It is served behind the same front as
`serve` (bridge/front.py), on its webhook fast path: the floor is what `serve` would cost if the
application did nothing else. `bench/ingest.py --targets bridge,floor,baseline` reports
`serve`/floor beside `serve`/baseline.
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

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from bench.common import SECRET  # noqa: E402

FLOOR_LIST = "bench-floor"
_STORE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
redis.call('HSET', KEYS[2], 'body', ARGV[1])
redis.call('EXPIRE', KEYS[2], 86400)
redis.call('LPUSH', KEYS[3], KEYS[2])
return 1
"""
_JSON = [("Content-Type", "application/json")]


def webhook(redis: Redis, secret: str = SECRET) -> Any:
    """(body, signature) -> (status, headers, payload), as the front's webhook fast path wants."""
    key = secret.encode()
    store = redis.register_script(_STORE)

    def answer(body: bytes, signature: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        given = (signature or "").removeprefix("sha256=").encode()
        if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest().encode(), given):
            return 401, _JSON, b'{"error": "bad signature"}\n'
        event_id = json.loads(body)["id"]
        if not store(keys=[f"floor:seen:{event_id}", f"floor:event:{event_id}", FLOOR_LIST], args=[body]):
            return 200, _JSON, b'{"received": true, "duplicate": true}\n'
        return 202, _JSON, b'{"received": true}\n'

    return answer


def factory() -> Any:
    """Granian's factory, in each worker process: the front of `serve` around the floor."""
    from bridge.front import Front
    from bridge.server import THREADS_ENV

    redis = Redis.from_url(os.environ["SB_FLOOR_REDIS_URL"], socket_connect_timeout=2, socket_timeout=5)

    def not_found(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", _JSON)
        return [b'{"error": "only POST /webhooks"}\n']

    threads = int(os.environ.get(THREADS_ENV, "4"))
    return Front(not_found, threads, max_body=1024 * 1024, body_timeout=10.0, webhook=webhook(redis))


def main() -> None:
    from granian.server import Server

    from bridge.server import server_options

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    os.environ["SB_FLOOR_REDIS_URL"] = args.redis_url
    Server("bench.floor_app:factory", **server_options(args.host, args.port, args.workers, args.threads)).serve()


if __name__ == "__main__":
    main()
