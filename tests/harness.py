"""Test helpers: signed sample events, a config on disk, and the bridge wired to real Redis."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from redis import Redis
from rq.serializers import JSONSerializer

from app import create_app
from bridge import redis_health, runtime
from bridge.runtime import Runtime
from bridge.worker import BridgeWorker, PlanScheduler
from mappings.config import BridgeConfig, load_config

SECRET = "test-secret"
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "bridge" / "samples"
EVENT_TYPES = sorted(p.stem for p in SAMPLES_DIR.glob("*.json"))


def sample(event_type: str, **overrides: Any) -> dict[str, Any]:
    """A shipped sample payload with a fresh id (and any envelope fields overridden)."""
    envelope: dict[str, Any] = json.loads((SAMPLES_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    envelope["id"] = f"evt_{uuid.uuid4().hex[:16]}"
    envelope.update(overrides)
    return copy.deepcopy(envelope)


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(envelope: Any) -> bytes:
    return json.dumps(envelope, ensure_ascii=False).encode()


class Bridge:
    """The web app, an installed worker runtime and a drain helper, all on one real Redis db."""

    def __init__(self, config_path: Path, redis_url: str):
        self.config: BridgeConfig = load_config(config_path)
        self.runtime = Runtime.from_config(self.config, redis_url)
        runtime.install(self.runtime)
        self.redis: Redis = self.runtime.redis
        redis_health.mark_data_start(self.redis)  # as `serve` and `worker` do at start
        self.app = create_app(self.config, redis=self.redis)
        self.client: FlaskClient = self.app.test_client()

    def keys_written(self) -> list[bytes]:
        """The bridge's keys in Redis, but for the mark of when its data began (written at start)."""
        return [key for key in self.redis.keys("sb:*") if key != redis_health.DATA_SINCE_KEY.encode()]

    def post(self, envelope: Any, secret: str | None = SECRET, headers: dict[str, str] | None = None):  # noqa: ANN201
        body = envelope if isinstance(envelope, bytes) else encode(envelope)
        all_headers = {"Content-Type": "application/json"}
        if secret is not None:
            all_headers["X-SalonBookIt-Signature"] = sign(body, secret)
        all_headers.update(headers or {})
        return self.client.post("/webhooks", data=body, headers=all_headers)

    def drain(self, timeout: float = 20.0) -> None:
        """Run queued jobs in-process on the product's worker class, and due scheduled retries
        and sends, until nothing is left (sends planned for later stay planned)."""
        queue = self.runtime.queue
        scheduler = PlanScheduler([queue], connection=self.redis, serializer=JSONSerializer)
        assert scheduler.acquire_locks() == {queue.name}, "another scheduler holds the lock"
        deadline = time.monotonic() + timeout
        try:
            while True:
                BridgeWorker([queue], connection=self.redis, serializer=JSONSerializer).work(burst=True)
                scheduler.enqueue_scheduled_jobs()
                if queue.count == 0 and queue.scheduled_job_registry.count == 0:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError("jobs still waiting after the drain timeout")
                time.sleep(0.1)
        finally:
            scheduler.release_locks()

    def record(self, event_id: str):  # noqa: ANN201
        record = self.runtime.store.find(event_id)
        assert record is not None, f"event {event_id} is not in the event log"
        return record

    def close(self) -> None:
        runtime.install(None)
        self.runtime.close()
        self.redis.connection_pool.disconnect()
