"""The platform's 13 sample payloads, and posting them signed exactly as the platform signs."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

SAMPLES_DIR = Path(__file__).resolve().parent


def sample_types() -> list[str]:
    return sorted(p.stem for p in SAMPLES_DIR.glob("*.json"))


def fresh_sample(event_type: str, tenant: str | None = None) -> dict[str, Any]:
    """A sample payload with a new id and `created` set to now."""
    event: dict[str, Any] = json.loads((SAMPLES_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    event["id"] = f"evt_{uuid.uuid4().hex[:20]}"
    event["created"] = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if tenant:
        event["tenant_id"] = tenant
    return event


def signed_request(event: dict[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers the platform sends for an event."""
    body = json.dumps(event, ensure_ascii=False).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-SalonBookIt-Signature": f"sha256={signature}",
        "X-SalonBookIt-Event": event["type"],
        "X-SalonBookIt-Delivery": f"dlv_{uuid.uuid4().hex[:20]}",
        "X-SalonBookIt-Timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def post_sample(url: str, event_type: str, secret: str, tenant: str | None = None) -> tuple[str, int, str]:
    """Post one fresh sample; returns (event id, HTTP status, answer body)."""
    event = fresh_sample(event_type, tenant)
    body, headers = signed_request(event, secret)
    try:
        response = requests.post(url, data=body, headers=headers, timeout=15)
    except requests.RequestException as exc:
        raise OSError(str(exc)) from None
    return event["id"], response.status_code, response.text.strip()[:500]
