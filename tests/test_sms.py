"""The `sms` connector through the official twilio SDK against a fake Twilio on localhost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from connectors.base import ActionRequest, PermanentError, TransientError, connector_class
from connectors.sms import SmsConnector, SmsSend, SmsSettings, segments
from tests.fakes.twilio_server import TwilioServer, form


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    server = TwilioServer().start()
    yield server
    server.stop()


def connector(twilio: TwilioServer, **settings: object) -> SmsConnector:
    values = {
        "type": "sms",
        "account_sid": "AC123",
        "auth_token": "tok",
        "from": "+34600000000",
        "base_url": twilio.url,
    }
    return SmsConnector("sms", SmsSettings.model_validate({**values, **settings}))


def request(to: str = "612 34 56 78", body: str = "Hola Ana, te esperamos el lunes a las 10:30") -> ActionRequest:
    return ActionRequest(
        action="send", fields={"to": to, "body": body}, event_id="evt_1", event_type="booking.created",
        event_created="2026-03-01T10:00:00Z", tenant_id="t", action_id="m/0",
    )  # fmt: skip


def test_registered() -> None:
    assert connector_class("sms") is SmsConnector


def test_sends_through_the_sdk_with_status_callback(twilio: TwilioServer) -> None:
    twilio.accept("SM0001")
    sms = connector(twilio, status_callback=True, public_url="https://bridge.salon.example/")
    result = sms.send(request())
    [seen] = twilio.requests
    assert (seen.method, seen.path) == ("POST", "/2010-04-01/Accounts/AC123/Messages.json")
    assert seen.headers["Authorization"].startswith("Basic ")
    assert form(seen) == {
        "To": "+34612345678", "From": "+34600000000", "Body": "Hola Ana, te esperamos el lunes a las 10:30",
        "StatusCallback": "https://bridge.salon.example/webhooks/twilio",
    }  # fmt: skip
    assert result.data == {"sid": "SM0001", "to": "+34612345678"}
    assert "1 part(s), GSM-7" in result.detail


def test_a_messaging_service_replaces_from(twilio: TwilioServer) -> None:
    twilio.accept("SM0002")
    connector(twilio, **{"from": None, "messaging_service_sid": "MG9"}).send(request())
    fields = form(twilio.requests[0])
    assert fields["MessagingServiceSid"] == "MG9" and "From" not in fields


def test_an_invalid_number_never_reaches_twilio(twilio: TwilioServer) -> None:
    with pytest.raises(PermanentError, match="not a valid phone number"):
        connector(twilio).send(request(to="12"))
    assert twilio.requests == []


@pytest.mark.parametrize(
    ("code", "status", "error", "words"),
    [
        (21211, 400, PermanentError, "not valid"),
        (21610, 400, PermanentError, "replied STOP"),
        (21408, 400, PermanentError, "Geo permissions"),
        (21612, 400, PermanentError, "cannot reach"),
        (20429, 429, TransientError, "rate limit"),
        (20500, 500, TransientError, "unavailable"),
        (30999, 400, PermanentError, "Twilio refused the SMS (Twilio 30999"),
    ],
)  # fmt: skip
def test_twilio_errors_map_to_reasons(
    twilio: TwilioServer, code: int, status: int, error: type[Exception], words: str
) -> None:
    twilio.fail(code, "Oddity", status=status)
    with pytest.raises(error) as caught:
        connector(twilio).send(request())
    assert words in str(caught.value) and "Oddity" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "encoding", "parts"),
    [("a" * 160, "GSM-7", 1), ("a" * 161, "GSM-7", 2), ("€" * 80, "GSM-7", 1), ("€" * 81, "GSM-7", 2),
     ("ó" * 70, "UCS-2", 1), ("ó" * 71, "UCS-2", 2), ("Cita mañana 😀", "UCS-2", 1), ("a" * 460, "GSM-7", 4)],
)  # fmt: skip
def test_segments(text: str, encoding: str, parts: int) -> None:
    assert segments(text) == (encoding, parts)


def test_a_long_fixed_body_is_warned_about_a_template_is_not() -> None:
    assert SmsSend(to="x", body="ó" * 300).load_warnings() == [
        ("body", "the SMS takes 5 parts (UCS-2); each part is billed")
    ]
    assert SmsSend(to="x", body="corto").load_warnings() == []
    assert SmsSend(to="x", body="{{ booking.notas }}" + "ó" * 300).load_warnings() == []


def test_bad_settings_are_refused() -> None:
    base = {"type": "sms", "account_sid": "AC1", "auth_token": "t"}
    with pytest.raises(ValidationError, match="exactly one"):
        SmsSettings.model_validate(base)
    with pytest.raises(ValidationError, match="exactly one"):
        SmsSettings.model_validate({**base, "from": "+34600000000", "messaging_service_sid": "MG1"})


def test_online_check_reports_bad_credentials(twilio: TwilioServer) -> None:
    twilio.fail(20003, "Authenticate", status=401)
    [problem] = connector(twilio).online_check()
    assert "check account_sid and auth_token" in problem
    twilio.respond_with(200, '{"sid": "AC123", "status": "active"}')
    assert connector(twilio).online_check() == []
