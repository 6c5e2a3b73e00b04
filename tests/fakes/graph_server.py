"""A fake Meta Graph API (WhatsApp Cloud API) on localhost: records requests, answers as scripted
(accepted sends with a wamid, or Meta's error bodies), and posts signed callbacks."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import requests

from tests.fakes.http_server import CapturingServer


class GraphServer(CapturingServer):
    def __init__(self) -> None:
        super().__init__()
        self._sent = 0

    def accept(self, wamid: str) -> None:
        """Script an accepted send, answered with `wamid`."""
        body = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": "x", "wa_id": "x"}],
            "messages": [{"id": wamid, "message_status": "accepted"}],
        }
        self.respond_with(200, json.dumps(body))

    def fail(self, code: int, message: str, status: int = 400, details: str = "") -> None:
        """Script one of Meta's error answers."""
        error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Atrace"}
        if details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        self.respond_with(status, json.dumps({"error": error}))


def signed_post(url: str, payload: dict[str, Any], app_secret: str | None) -> requests.Response:
    """POST `payload` to `url` as Meta does, signed with `app_secret` (unsigned when None)."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if app_secret is not None:
        headers["X-Hub-Signature-256"] = hub_signature(body, app_secret)
    return requests.post(url, data=body, headers=headers, timeout=5)


def hub_signature(body: bytes, app_secret: str) -> str:
    """X-Hub-Signature-256 as Meta computes it: HMAC-SHA256 of the raw body with the app secret."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def status_callback(
    wamid: str, status: str, errors: list[dict[str, Any]] | None = None, timestamp: str = "1764680000"
) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": wamid, "status": status, "timestamp": timestamp, "recipient_id": "34612345678"}
    if errors:
        entry["errors"] = errors
    return _notification({"statuses": [entry]})


def message_callback(wa_id: str, text: str, timestamp: str = "1764680000") -> dict[str, Any]:
    """A customer's text message, as Meta notifies it."""
    message: dict[str, Any] = {"from": wa_id, "id": f"wamid.in{timestamp}", "timestamp": timestamp, "type": "text"}
    message["text"] = {"body": text}
    contacts = [{"profile": {"name": "Ana"}, "wa_id": wa_id}]
    return _notification({"contacts": contacts, "messages": [message]})


def _notification(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "WABA", "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp", **value}}]}
        ],
    }
