"""The `http` connector against a real local HTTP server: body, headers, signature, answers."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from connectors.base import ActionRequest, PermanentError, TransientError, parse_retry_after
from connectors.http import HttpConnector, HttpSettings
from tests.fakes.http_server import CapturingServer


def connector(url: str, **settings: object) -> HttpConnector:
    return HttpConnector("crm", HttpSettings.model_validate({"type": "http", "url": url, **settings}))


def request(body: object) -> ActionRequest:
    return ActionRequest(
        action="send", fields={"body": body}, event_id="evt_1", event_type="booking.created",
        event_created="2024-01-20T10:30:00Z", tenant_id="t", action_id="m/0",
    )  # fmt: skip


def test_sends_the_json_body_with_headers_and_signature(destination: CapturingServer) -> None:
    crm = connector(f"{destination.url}/in", headers={"Authorization": "Bearer abc"}, signing_secret="k", method="PUT")
    crm.send(request({"nombre": "José", "n": 1}))
    crm.close()
    [seen] = destination.requests
    assert (seen.method, seen.path) == ("PUT", "/in")
    assert seen.json() == {"nombre": "José", "n": 1}
    assert seen.headers["Authorization"] == "Bearer abc"
    assert seen.headers["Idempotency-Key"] == "evt_1/m/0"
    assert seen.headers["X-Signature"] == "sha256=" + hmac.new(b"k", seen.body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, None), (201, None), (204, None),
        (408, TransientError), (425, TransientError), (429, TransientError),
        (500, TransientError), (502, TransientError), (503, TransientError),
        (400, PermanentError), (401, PermanentError), (403, PermanentError), (404, PermanentError),
        (410, PermanentError), (422, PermanentError),
        (301, PermanentError), (307, PermanentError),
    ],
)  # fmt: skip
def test_answers_are_classified(destination: CapturingServer, status: int, error: type[Exception] | None) -> None:
    destination.respond_with(status, "x" * 5000, headers={"Location": "https://elsewhere.example/"})
    crm = connector(destination.url)
    try:
        if error is None:
            assert crm.send(request({})).detail.startswith(f"HTTP {status}")
        else:
            with pytest.raises(error) as caught:
                crm.send(request({}))
            assert len(caught.value.reason) < 2100  # a bounded excerpt of the answer
            if 300 <= status < 400:
                assert "redirects to https://elsewhere.example/" in caught.value.reason
    finally:
        crm.close()


def test_retry_after_is_passed_on(destination: CapturingServer) -> None:
    destination.respond_with(503, "busy", headers={"Retry-After": "42"})
    crm = connector(destination.url)
    with pytest.raises(TransientError) as caught:
        crm.send(request({}))
    crm.close()
    assert caught.value.retry_after == 42


def test_retry_after_as_an_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=90)
    assert 80 < (parse_retry_after(format_datetime(later, usegmt=True)) or 0) <= 90
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_timeout_is_transient_and_may_have_been_delivered(destination: CapturingServer) -> None:
    destination.respond_with(200, delay=1.5)
    crm = connector(destination.url, timeout=0.3)
    with pytest.raises(TransientError, match="did not answer within 0.3 s") as caught:
        crm.send(request({}))
    crm.close()
    # The receiver got the request; only its answer was late.
    assert caught.value.maybe_delivered and len(destination.requests) == 1


def test_an_error_answer_was_not_delivered(destination: CapturingServer) -> None:
    destination.respond_with(503, "busy")
    crm = connector(destination.url)
    with pytest.raises(TransientError) as caught:
        crm.send(request({}))
    crm.close()
    assert not caught.value.maybe_delivered


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    crm = connector(f"http://127.0.0.1:{port}/")
    with pytest.raises(TransientError, match="cannot connect to") as caught:
        crm.send(request({}))
    crm.close()
    assert not caught.value.maybe_delivered  # nothing left the machine


@pytest.mark.parametrize(
    ("event_id", "header"),
    [
        pytest.param("evt_1", "evt_1/m/0", id="plain-unchanged"),
        pytest.param("evt_\U0001f600", "evt_%F0%9F%98%80/m/0", id="emoji"),
        pytest.param("evt 1", "evt 1/m/0", id="inner-space-unchanged"),
    ],
)
def test_the_idempotency_key_goes_out_whatever_the_event_id(destination: CapturingServer, event_id, header) -> None:  # noqa: ANN001
    crm = connector(f"{destination.url}/in")
    crm.send(dataclasses.replace(request({"n": 1}), event_id=event_id))
    crm.close()
    assert destination.requests[0].headers["Idempotency-Key"] == header


def test_a_request_that_can_never_be_sent_is_permanent(destination: CapturingServer) -> None:
    crm = connector(f"{destination.url}/in", headers={"X-Tenant": "acme\nX-Evil: 1"})
    with pytest.raises(PermanentError, match="cannot be sent as configured"):
        crm.send(request({"n": 1}))
    crm.close()
    assert destination.requests == []
