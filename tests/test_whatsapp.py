"""The `whatsapp` connector against a fake Graph API on localhost: wire format, phones, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from connectors.base import ActionRequest, PermanentError, TransientError, connector_class
from connectors.whatsapp import WhatsAppConnector, WhatsAppSettings, WhatsAppTemplate
from tests.fakes.graph_server import GraphServer


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    server = GraphServer().start()
    yield server
    server.stop()


def connector(graph: GraphServer, **settings: object) -> WhatsAppConnector:
    values = {
        "type": "whatsapp",
        "phone_number_id": "1055",
        "token": "EAAsecret",
        "app_secret": "s",
        "base_url": graph.url,
    }
    return WhatsAppConnector("whatsapp", WhatsAppSettings.model_validate({**values, **settings}))


def request(to: str = "612 34 56 78", parameters: object = ("Ana", "lunes 3 de marzo", "10:30")) -> ActionRequest:
    fields = {
        "to": to,
        "template": "recordatorio_cita",
        "language": "es",
        "parameters": list(parameters) if isinstance(parameters, tuple) else parameters,
    }  # type: ignore[arg-type]
    return ActionRequest(
        action="template", fields=fields, event_id="evt_1", event_type="booking.created",
        event_created="2026-03-01T10:00:00Z", tenant_id="t", action_id="m/0",
    )  # fmt: skip


def test_registered() -> None:
    assert connector_class("whatsapp") is WhatsAppConnector


def test_sends_a_template_message_as_meta_documents_it(graph: GraphServer) -> None:
    graph.accept("wamid.HBgL123")
    wa = connector(graph)
    result = wa.send(request())
    wa.close()
    [seen] = graph.requests
    assert (seen.method, seen.path) == ("POST", "/v21.0/1055/messages")
    assert seen.headers["Authorization"] == "Bearer EAAsecret"
    assert seen.json() == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+34612345678", "type": "template",
        "template": {
            "name": "recordatorio_cita", "language": {"code": "es"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Ana"}, {"type": "text", "text": "lunes 3 de marzo"},
                {"type": "text", "text": "10:30"},
            ]}],
        },
    }  # fmt: skip
    assert result.data == {"wamid": "wamid.HBgL123", "to": "+34612345678"}
    assert "EAAsecret" not in result.detail


@pytest.mark.parametrize(
    ("raw", "region", "e164"), [("+52 55 1234 5678", "ES", "+525512345678"), ("55 1234 5678", "MX", "+525512345678")]
)
def test_numbers_are_normalised_with_the_default_region(graph: GraphServer, raw: str, region: str, e164: str) -> None:
    graph.accept("wamid.1")
    connector(graph, default_region=region).send(request(to=raw))
    assert graph.requests[0].json()["to"] == e164


@pytest.mark.parametrize("raw", ["", "no tengo", "123", "+34 000"])
def test_an_invalid_number_is_dead_without_calling_meta(graph: GraphServer, raw: str) -> None:
    with pytest.raises(PermanentError, match="phone"):
        connector(graph).send(request(to=raw))
    assert graph.requests == []


@pytest.mark.parametrize(
    ("code", "status", "error", "words"),
    [
        (190, 401, PermanentError, "renew the token"),
        (132000, 400, PermanentError, "'recordatorio_cita': sent 3 parameter"),
        (132001, 404, PermanentError, "'recordatorio_cita'"),
        (131026, 400, PermanentError, "cannot receive WhatsApp"),
        (131047, 400, PermanentError, "24 hours"),
        (130429, 400, TransientError, "rate limit"),
        (131056, 400, TransientError, "rate limit"),
        (80007, 400, TransientError, "rate limit"),
        (131000, 500, TransientError, "unavailable"),
        (135000, 400, PermanentError, "Meta 135000: Oddity"),
    ],
)  # fmt: skip
def test_meta_errors_map_to_what_an_owner_can_act_on(
    graph: GraphServer, code: int, status: int, error: type[Exception], words: str
) -> None:
    graph.fail(code, "Oddity", status=status, details="expected 2 parameters")
    with pytest.raises(error) as caught:
        connector(graph).send(request())
    assert words in str(caught.value)
    assert "Oddity" in str(caught.value)
    if isinstance(caught.value, TransientError) and "rate" in words:
        assert caught.value.retry_after and caught.value.retry_after > 0


def test_a_5xx_without_meta_body_and_a_timeout_are_transient(graph: GraphServer) -> None:
    graph.respond_with(502, "bad gateway")
    with pytest.raises(TransientError):
        connector(graph).send(request())
    graph.respond_with(200, "{}", delay=0.5)
    with pytest.raises(TransientError, match="did not answer"):
        connector(graph, timeout=0.1).send(request())


def test_bad_input_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="token"):
        WhatsAppSettings.model_validate({"type": "whatsapp", "phone_number_id": "1", "app_secret": "s"})
    with pytest.raises(ValidationError, match="not a template"):
        WhatsAppTemplate.model_validate({"to": "x", "template": "{{ nombre }}"})
    with pytest.raises(ValidationError, match="list"):
        WhatsAppTemplate.model_validate({"to": "x", "template": "t", "parameters": "Ana"})


def test_online_check_reports_an_expired_token(graph: GraphServer) -> None:
    graph.fail(190, "Error validating access token: Session has expired", status=401)
    [problem] = connector(graph).online_check()
    assert "renew the token" in problem
    assert graph.requests[0].path.startswith("/v21.0/1055?")
    graph.respond_with(200, '{"display_phone_number": "+34 600 00 00 00", "id": "1055"}')
    assert connector(graph).online_check() == []
