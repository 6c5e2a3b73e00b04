"""The platform's 13 sample payloads, and posting them signed exactly as the platform signs."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

SAMPLES_DIR = Path(__file__).resolve().parent
# `send-sample all` posts them as the platform would have: in the order the samples' `created` tells
# (a booking's events after its booking.created, an order's after its order.created).
SEND_ORDER = (
    "customer.created", "booking.created", "payment.failed", "payment.completed", "booking.updated",
    "booking.cancelled", "order.created", "payment.refunded", "order.shipped", "customer.updated",
    "order.delivered", "booking.completed", "booking.no_show",
)  # fmt: skip
SAMPLE_DAY = date(2024, 1, 25)  # the samples' appointment; posted samples move it to tomorrow
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?$")


def sample_types() -> list[str]:
    return sorted(p.stem for p in SAMPLES_DIR.glob("*.json"))


def fresh_sample(event_type: str, tenant: str | None = None, created: datetime | None = None) -> dict[str, Any]:
    """A sample payload with a new id, `created` set to now (or `created`), and its dates moved so
    that the appointment is tomorrow: calendar entries land where an owner looks."""
    event: dict[str, Any] = json.loads((SAMPLES_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    event["id"] = f"evt_{uuid.uuid4().hex[:20]}"
    event["created"] = (created or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    event["data"] = _moved(event["data"], datetime.now(UTC).date() + timedelta(days=1) - SAMPLE_DAY)
    if tenant:
        event["tenant_id"] = tenant
    return event


def _moved(value: Any, by: timedelta) -> Any:
    """Every date and date-time in the payload, `by` later."""
    if isinstance(value, dict):
        return {key: _moved(item, by) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, by) for item in value]
    if isinstance(value, str) and (match := _DATE.match(value)):
        return (date.fromisoformat(match.group(1)) + by).isoformat() + (match.group(2) or "")
    return value


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


def post_sample(
    url: str, event_type: str, secret: str, tenant: str | None = None, created: datetime | None = None
) -> tuple[str, int, str]:
    """Post one fresh sample; returns (event id, HTTP status, answer body)."""
    event = fresh_sample(event_type, tenant, created)
    body, headers = signed_request(event, secret)
    try:
        response = requests.post(url, data=body, headers=headers, timeout=15)
    except requests.RequestException as exc:
        raise OSError(str(exc)) from None
    return event["id"], response.status_code, response.text.strip()[:500]
