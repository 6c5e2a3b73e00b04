"""A fake Twilio REST API on localhost: records requests, answers as scripted (a queued Message,
or Twilio's error bodies), and posts status callbacks signed as Twilio signs them."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import requests
from twilio.request_validator import RequestValidator

from tests.fakes.http_server import CapturingServer, RecordedRequest


class TwilioServer(CapturingServer):
    def accept(self, sid: str, to: str = "+34612345678") -> None:
        """Script an accepted message, answered with `sid`."""
        body = {"sid": sid, "status": "queued", "to": to, "from": "+34600000000", "body": "", "num_segments": "1"}
        self.respond_with(201, json.dumps(body))

    def fail(self, code: int, message: str, status: int = 400) -> None:
        """Script one of Twilio's error answers."""
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        self.respond_with(status, json.dumps(body))


def form(request: RecordedRequest) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(request.body.decode()).items()}


def signed_status(url: str, auth_token: str | None, params: dict[str, str]) -> requests.Response:
    """POST a status callback to `url` as Twilio does, signed with `auth_token` (unsigned when None)."""
    headers = {}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, params)
    return requests.post(url, data=params, headers=headers, timeout=5)
